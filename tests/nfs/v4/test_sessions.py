"""NFSv4.1 client records, sessions, slots and leases (RFC 8881 §2.10, §18.35-18.37, §18.46)."""

from __future__ import annotations

import gc
import sys

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    BindConnArgs,
    ChannelAttrs,
    ClientidArgs,
    CloseArgs,
    CreateSessionArgs,
    ExchangeIdArgs,
    NameArgs,
    ReclaimCompleteArgs,
    SequenceArgs,
    SessionArgs,
    StateId,
    StateProtectOps,
)
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.v4.client import BACK, CHANNEL, V4Client
from tests.nfs.v4.harness import FakeConn, Harness


def _eid(owner: bytes, verifier: bytes = b"verifier", flags: int = 0) -> tuple[int, object]:
    return (c.OP_EXCHANGE_ID, ExchangeIdArgs(verifier, owner, flags, Arm(c.SP4_NONE), []))


def _cs(
    client: V4Client,
    seq: int | None = None,
    flags: int = 0,
    fore: ChannelAttrs = CHANNEL,
    back: ChannelAttrs = BACK,
) -> tuple[int, object]:
    return (
        c.OP_CREATE_SESSION,
        CreateSessionArgs(
            client.clientid,
            client.seq if seq is None else seq,
            flags,
            fore,
            back,
            0x40000000,
            [Arm(c.AUTH_NONE)],
        ),
    )


class ExchangeIdTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_new_client(self) -> None:
        """EXCHANGE_ID makes an unconfirmed record: sequence 1, non-pNFS, SP4_NONE, the server owner."""
        cl = self.h.client()
        r = cl.exchange_id(b"me")
        self.assertEqual(r.status, c.NFS4_OK)
        res = r.last()
        self.assertEqual(res.sequenceid, 1)
        self.assertEqual(res.flags & c.EXCHGID4_FLAG_MASK_PNFS, c.EXCHGID4_FLAG_USE_NON_PNFS)
        self.assertFalse(res.flags & c.EXCHGID4_FLAG_CONFIRMED_R)
        self.assertEqual(res.server_owner.major_id, res.server_scope)

    def test_same_client_again(self) -> None:
        """Case 2: a confirmed client repeating itself gets its clientid back, CONFIRMED_R."""
        cl = self.h.client().setup(b"again")
        r = cl.raw([_eid(b"again")])
        self.assertEqual(r.last().clientid, cl.clientid)
        self.assertTrue(r.last().flags & c.EXCHGID4_FLAG_CONFIRMED_R)

    def test_bad_flags(self) -> None:
        """Undefined or server-only flags answer NFS4ERR_INVAL."""
        cl = self.h.client()
        for flags in (4, c.EXCHGID4_FLAG_CONFIRMED_R, 1 << 20):
            self.assertEqual(cl.raw([_eid(b"x", flags=flags)]).status, c.NFS4ERR_INVAL)

    def test_state_protection_refused(self) -> None:
        """SP4_MACH_CRED needs RPCSEC_GSS: NFS4ERR_INVAL over AUTH_SYS."""
        cl = self.h.client()
        args = ExchangeIdArgs(b"v" * 8, b"x", 0, Arm(c.SP4_MACH_CRED, StateProtectOps([], [])), [])
        self.assertEqual(cl.raw([(c.OP_EXCHANGE_ID, args)]).status, c.NFS4ERR_INVAL)

    def test_update_without_record(self) -> None:
        """Case 7: an update of no confirmed record is NFS4ERR_NOENT."""
        cl = self.h.client()
        r = cl.raw([_eid(b"nobody", flags=c.EXCHGID4_FLAG_UPD_CONFIRMED_REC_A)])
        self.assertEqual(r.status, c.NFS4ERR_NOENT)

    def test_update_cases(self) -> None:
        """Cases 6, 8, 9: update by the same, with another verifier, by another principal."""
        cl = self.h.client(uid=0).setup(b"upd")
        upd = c.EXCHGID4_FLAG_UPD_CONFIRMED_REC_A
        self.assertEqual(cl.raw([_eid(b"upd", flags=upd)]).last().clientid, cl.clientid)
        self.assertEqual(cl.raw([_eid(b"upd", b"other-vf", upd)]).status, c.NFS4ERR_NOT_SAME)
        other = self.h.client(uid=1234)
        self.assertEqual(other.raw([_eid(b"upd", flags=upd)]).status, c.NFS4ERR_PERM)

    def test_reboot_replaces_on_confirm(self) -> None:
        """Case 5: a new verifier makes a new record; the old session lives until it is confirmed."""
        old = self.h.client().setup(b"rebooter")
        new = self.h.client()
        r = new.exchange_id(b"rebooter", verifier=b"newverif")
        self.assertNotEqual(r.last().clientid, old.clientid)
        self.assertEqual(old.compound([]).status, c.NFS4_OK)
        self.assertEqual(new.create_session().status, c.NFS4_OK)
        self.assertEqual(old.compound([]).status, c.NFS4ERR_BADSESSION)

    def test_collision_in_use(self) -> None:
        """Case 3: another principal with the same owner is refused while the record has state."""
        self.h.client(uid=0).setup(b"shared")
        other = self.h.client(uid=42)
        self.assertEqual(other.raw([_eid(b"shared")]).status, c.NFS4ERR_CLID_INUSE)

    def test_collision_without_state(self) -> None:
        """Case 3 without state: the old record goes at once (its clientid is stale)."""
        first = self.h.client(uid=0).setup(b"lonely")
        first.raw([(c.OP_DESTROY_SESSION, SessionArgs(first.sessionid))])
        other = self.h.client(uid=42)
        r = other.raw([_eid(b"lonely")])
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(first.raw([_cs(first)]).status, c.NFS4ERR_STALE_CLIENTID)

    def test_not_only_op(self) -> None:
        """Without SEQUENCE, EXCHANGE_ID must be alone (NFS4ERR_NOT_ONLY_OP)."""
        cl = self.h.client()
        r = cl.raw([_eid(b"x"), (c.OP_PUTROOTFH, None)])
        self.assertEqual(r.status, c.NFS4ERR_NOT_ONLY_OP)

    def test_too_many_clients(self) -> None:
        """C{max_clients} records at once; one more answers NFS4ERR_DELAY."""
        h = Harness(settings=Settings(max_clients=3))
        for i in range(3):
            self.assertEqual(h.client().exchange_id(b"c%d" % i).status, c.NFS4_OK)
        self.assertEqual(h.client().exchange_id(b"c-more").status, c.NFS4ERR_DELAY)


class CreateSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_stale_clientid(self) -> None:
        cl = self.h.client()
        cl.clientid = 12345
        self.assertEqual(cl.raw([_cs(cl, 1)]).status, c.NFS4ERR_STALE_CLIENTID)

    def test_replay_is_identical(self) -> None:
        """A retransmitted CREATE_SESSION gets the first result, not a second session."""
        cl = self.h.client()
        cl.exchange_id(b"r")
        first = cl.raw([_cs(cl)])
        again = cl.raw([_cs(cl)])
        self.assertEqual(first.results, again.results)
        self.assertEqual(len(self.h.nfs4.clients.sessions), 1)

    def test_misordered(self) -> None:
        """Too old (the contrived replay) or too new a sequence: NFS4ERR_SEQ_MISORDERED."""
        cl = self.h.client()
        cl.exchange_id(b"m")
        self.assertEqual(cl.raw([_cs(cl, cl.seq - 1)]).status, c.NFS4ERR_SEQ_MISORDERED)
        self.assertEqual(cl.raw([_cs(cl, cl.seq + 1)]).status, c.NFS4ERR_SEQ_MISORDERED)

    def test_other_principal_unconfirmed(self) -> None:
        """An unconfirmed record is confirmed only by its own principal (NFS4ERR_CLID_INUSE)."""
        cl = self.h.client(uid=0)
        cl.exchange_id(b"p")
        thief = self.h.client(uid=77)
        thief.clientid, thief.seq = cl.clientid, cl.seq
        self.assertEqual(thief.raw([_cs(thief)]).status, c.NFS4ERR_CLID_INUSE)

    def test_channel_sizes(self) -> None:
        """Channels that could carry nothing are NFS4ERR_TOOSMALL; large asks are cut down."""
        cl = self.h.client()
        cl.exchange_id(b"sizes")
        tiny = ChannelAttrs(0, 20, 8192, 8192, 8, 8, [])
        self.assertEqual(cl.raw([_cs(cl, fore=tiny)]).status, c.NFS4ERR_TOOSMALL)
        self.assertEqual(cl.raw([_cs(cl, back=tiny)]).status, c.NFS4ERR_TOOSMALL)
        huge = ChannelAttrs(0, 1 << 30, 1 << 30, 1 << 30, 4096, 5000, [7])
        r = cl.raw([_cs(cl, fore=huge)])
        self.assertEqual(r.status, c.NFS4_OK)
        fore = r.last().fore_chan_attrs
        s = self.h.nfs4.settings
        self.assertEqual(
            (fore.maxrequests, fore.maxoperations, fore.maxresponsesize_cached, fore.rdma_ird),
            (s.max_slots, s.max_ops, s.reply_cache_size, []),
        )
        self.assertLessEqual(fore.maxrequestsize, s.max_record)

    def test_back_channel_echoed(self) -> None:
        """The back channel is what the client offered (the Linux client insists)."""
        cl = self.h.client()
        cl.exchange_id(b"echo")
        r = cl.raw([_cs(cl)])
        self.assertEqual(r.last().back_chan_attrs, BACK)

    def test_bad_flags(self) -> None:
        cl = self.h.client()
        cl.exchange_id(b"flags")
        self.assertEqual(cl.raw([_cs(cl, flags=8)]).status, c.NFS4ERR_INVAL)

    def test_too_many_sessions(self) -> None:
        h = Harness(settings=Settings(max_sessions_per_client=2))
        cl = h.client()
        cl.exchange_id(b"many")
        for _ in range(2):
            self.assertEqual(cl.create_session().status, c.NFS4_OK)
        self.assertEqual(cl.create_session().status, c.NFS4ERR_DELAY)


class SequenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()

    def _seq(self, seqid: int, slot: int = 0, cachethis: bool = False) -> tuple[int, object]:
        return (c.OP_SEQUENCE, SequenceArgs(self.cl.sessionid, seqid, slot, slot, cachethis))

    def test_rules(self) -> None:
        """SEQUENCE first, or a session-less operation alone; nothing else."""
        self.assertEqual(self.cl.raw([(c.OP_PUTROOTFH, None)]).status, c.NFS4ERR_OP_NOT_IN_SESSION)
        r = self.cl.compound([(c.OP_SEQUENCE, SequenceArgs(self.cl.sessionid, 1, 1, 1, False))])
        self.assertEqual(r.status, c.NFS4ERR_SEQUENCE_POS)
        self.assertEqual(self.cl.raw([]).status, c.NFS4_OK)

    def test_bad_session_and_slot(self) -> None:
        bad = (c.OP_SEQUENCE, SequenceArgs(b"x" * 16, 1, 0, 0, False))
        self.assertEqual(self.cl.raw([bad]).status, c.NFS4ERR_BADSESSION)
        self.assertEqual(self.cl.raw([self._seq(1, slot=8)]).status, c.NFS4ERR_BADSLOT)

    def test_misordered(self) -> None:
        """A seqid neither the slot's last nor the next: NFS4ERR_SEQ_MISORDERED, slot unchanged."""
        self.assertEqual(self.cl.raw([self._seq(5, slot=3)]).status, c.NFS4ERR_SEQ_MISORDERED)
        self.assertEqual(self.cl.raw([self._seq(1, slot=3)]).status, c.NFS4_OK)

    def test_replay_executes_once(self) -> None:
        """A retry of a REMOVE gets the first reply (OK), not a second execution (NOENT)."""
        self.cl.compound(self.cl.path(b"export") + [self.cl.open_create(b"victim")])
        ops = self.cl.path(b"export") + [(c.OP_REMOVE, NameArgs(b"victim"))]
        first = self.cl.compound(ops, slot=1, cachethis=True)
        self.assertEqual(first.status, c.NFS4_OK)
        again = self.cl.compound(ops, slot=1, cachethis=True, retry=True)
        self.assertEqual(again.status, c.NFS4_OK)
        self.assertEqual(again.results, first.results)
        fresh = self.cl.compound(ops, slot=1)
        self.assertEqual(fresh.status, c.NFS4ERR_NOENT)

    def test_false_retry(self) -> None:
        """A different request with the slot's last seqid: NFS4ERR_SEQ_FALSE_RETRY."""
        self.cl.compound([(c.OP_PUTROOTFH, None)], slot=2)
        r = self.cl.compound([(c.OP_PUTROOTFH, None), (c.OP_GETFH, None)], slot=2, retry=True)
        self.assertEqual(r.status, c.NFS4ERR_SEQ_FALSE_RETRY)

    def test_uncached_retry(self) -> None:
        """A reply too large to keep is answered NFS4ERR_RETRY_UNCACHED_REP on retry."""
        cl = self.h.client()
        cl.exchange_id(b"uncached")
        cl.create_session(fore=ChannelAttrs(0, 8192, 8192, 512, 8, 8, []))
        ops = [(c.OP_PUTROOTFH, None), *[cl.getattr(*range(0, 56))] * 3]
        self.assertEqual(cl.compound(ops, slot=4).status, c.NFS4_OK)
        r = cl.compound(ops, slot=4, retry=True)
        self.assertEqual(r.status, c.NFS4ERR_RETRY_UNCACHED_REP)

    def test_retry_while_running(self) -> None:
        """A retry while the first is still running: NFS4ERR_DELAY."""
        gate: defer.Deferred[object] = defer.Deferred()
        real = self.h.nfs4.handlers[c.OP_PUTROOTFH]

        async def slow(st: object, args: object) -> object:
            await gate
            return await real(st, args)  # type: ignore[arg-type]

        self.h.nfs4.handlers[c.OP_PUTROOTFH] = slow  # type: ignore[assignment]
        waiting = self.h.client(conn=self.cl.conn, deferred=True)  # type: ignore[attr-defined]
        waiting.sessionid = self.cl.sessionid
        self.cl = waiting
        first = self.cl.compound([(c.OP_PUTROOTFH, None)], slot=5)
        self.assertNoResult(first)
        again = self.successResultOf(self.cl.compound([(c.OP_PUTROOTFH, None)], slot=5, retry=True))
        self.assertEqual(again.status, c.NFS4ERR_DELAY)
        gate.callback(None)
        self.assertEqual(self.successResultOf(first).status, c.NFS4_OK)

    def test_limits(self) -> None:
        """Too many operations, too large a request, too large a reply."""
        cl = self.h.client()
        cl.exchange_id(b"small")
        small = ChannelAttrs(0, 512, 400, 400, 4, 4, [])
        cl.create_session(fore=small)
        self.assertEqual(cl.compound([(c.OP_PUTROOTFH, None)] * 4).status, c.NFS4ERR_TOO_MANY_OPS)
        r = cl.compound([(c.OP_PUTROOTFH, None), (c.OP_LOOKUP, NameArgs(b"n" * 600))])
        self.assertEqual(r.status, c.NFS4ERR_REQ_TOO_BIG)
        big = [(c.OP_PUTROOTFH, None), cl.getattr(*range(0, 56))]
        self.assertEqual(cl.compound(big + big[1:]).status, c.NFS4ERR_REP_TOO_BIG)
        self.assertEqual(cl.compound(big, cachethis=True).status, c.NFS4ERR_REP_TOO_BIG_TO_CACHE)

    def test_cached_size_too_small(self) -> None:
        """A session whose cached replies cannot hold even SEQUENCE refuses cachethis."""
        cl = self.h.client()
        cl.exchange_id(b"cache10")
        cl.create_session(fore=ChannelAttrs(0, 8192, 8192, 10, 8, 8, []))
        self.assertEqual(cl.compound([], cachethis=True).status, c.NFS4ERR_REP_TOO_BIG_TO_CACHE)
        self.assertEqual(cl.compound([]).status, c.NFS4_OK)

    def test_unbound_connection_binds(self) -> None:
        """A SEQUENCE on another connection binds it to the session (no state protection)."""
        other = self.h.client(conn=FakeConn())
        other.sessionid, other.slots = self.cl.sessionid, dict(self.cl.slots)
        self.assertEqual(other.compound([]).status, c.NFS4_OK)
        s = self.h.nfs4.clients.sessions[self.cl.sessionid]
        self.assertIn(other.conn.conn_id, s.conns)  # type: ignore[attr-defined]


class DestroyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_destroy_session(self) -> None:
        cl = self.h.client().setup()
        self.assertEqual(
            cl.raw([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid))]).status, c.NFS4_OK
        )
        self.assertEqual(cl.compound([]).status, c.NFS4ERR_BADSESSION)
        self.assertEqual(
            cl.raw([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid))]).status, c.NFS4ERR_BADSESSION
        )

    def test_destroy_session_unbound(self) -> None:
        """Only a connection bound to the session may destroy it without SEQUENCE."""
        cl = self.h.client().setup()
        stranger = self.h.client(conn=FakeConn())
        r = stranger.raw([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid))])
        self.assertEqual(r.status, c.NFS4ERR_CONN_NOT_BOUND_TO_SESSION)

    def test_destroy_session_last(self) -> None:
        """Inside a SEQUENCE compound, DESTROY_SESSION must be last."""
        cl = self.h.client().setup()
        r = cl.compound([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid)), (c.OP_PUTROOTFH, None)])
        self.assertEqual(r.status, c.NFS4ERR_NOT_ONLY_OP)
        self.assertEqual(
            cl.compound([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid))]).status, c.NFS4_OK
        )

    def test_destroy_clientid(self) -> None:
        """A client with sessions is busy; without, it goes (twice: stale)."""
        cl = self.h.client().setup()
        r = cl.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(cl.clientid))])
        self.assertEqual(r.status, c.NFS4ERR_CLIENTID_BUSY)
        cl.raw([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid))])
        self.assertEqual(
            cl.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(cl.clientid))]).status, c.NFS4_OK
        )
        self.assertEqual(
            cl.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(cl.clientid))]).status,
            c.NFS4ERR_STALE_CLIENTID,
        )
        self.assertEqual(len(self.h.nfs4.clients), 0)

    def test_reclaim_complete_once(self) -> None:
        cl = self.h.client().setup(reclaim_complete=False)
        r = cl.compound(
            [(c.OP_PUTROOTFH, None), (c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(True))]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(
            cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))]).status, c.NFS4_OK
        )
        r = cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, c.NFS4ERR_COMPLETE_ALREADY)


class LeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(settings=Settings(lease_secs=30))

    def test_unconfirmed_expires(self) -> None:
        """An unconfirmed record not confirmed within a lease is gone."""
        cl = self.h.client()
        cl.exchange_id(b"slow")
        self.h.clock.advance(31)
        self.assertEqual(cl.raw([_cs(cl)]).status, c.NFS4ERR_STALE_CLIENTID)

    def test_renewed_by_sequence(self) -> None:
        """SEQUENCE renews the lease; silence past it ends the client and its state."""
        cl = self.h.client().setup()
        r = cl.compound(
            cl.path(b"export") + [cl.open_create(b"held", deny=c.OPEN4_SHARE_DENY_BOTH)]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        for _ in range(5):
            self.h.clock.advance(20)
            self.assertEqual(cl.compound([]).status, c.NFS4_OK)
        other = self.h.client().setup()
        blocked = other.compound(
            other.path(b"export") + [other.open_existing(b"held", owner=b"o2")]
        )
        self.assertEqual(blocked.status, c.NFS4ERR_SHARE_DENIED)
        self.h.clock.advance(20)
        self.assertEqual(other.compound([]).status, c.NFS4_OK)
        self.h.clock.advance(11)
        self.assertEqual(cl.compound([]).status, c.NFS4ERR_BADSESSION)
        ok = other.compound(other.path(b"export") + [other.open_existing(b"held", owner=b"o2")])
        self.assertEqual(ok.status, c.NFS4_OK)
        self.assertEqual(self.h.vfs.locks.records, 1)

    def test_sweep_runs_on_clock(self) -> None:
        """Expired clients are swept by the clock even when nobody asks."""
        for i in range(3):
            self.h.client().setup(b"idle%d" % i)
        self.assertEqual(len(self.h.nfs4.clients), 3)
        self.h.clock.advance(31)
        self.h.clock.advance(16)
        self.assertEqual(len(self.h.nfs4.clients), 0)


class BindTests(SynchronousTestCase):
    def test_back_channel_follows_connections(self) -> None:
        """Losing the callback connection reports CB_PATH_DOWN; BIND_CONN_TO_SESSION restores it."""
        h = Harness()
        cl = h.client().setup()
        s = h.nfs4.clients.sessions[cl.sessionid]
        self.assertTrue(s.callbacks_up)
        cl.conn.close()  # type: ignore[attr-defined]
        self.assertFalse(s.callbacks_up)
        again = h.client(conn=FakeConn())
        again.sessionid, again.slots = cl.sessionid, dict(cl.slots)
        flags = again.compound([]).last().status_flags
        self.assertTrue(flags & c.SEQ4_STATUS_CB_PATH_DOWN_SESSION)
        r = again.raw(
            [(c.OP_BIND_CONN_TO_SESSION, BindConnArgs(cl.sessionid, c.CDFC4_BACK_OR_BOTH, False))]
        )
        self.assertEqual(r.last().dir, c.CDFS4_BOTH)
        self.assertTrue(s.callbacks_up)
        self.assertEqual(again.compound([]).last().status_flags, 0)


class MemoryTests(SynchronousTestCase):
    def test_client_cycles_do_not_grow(self) -> None:
        """
        10,000 client cycles (EXCHANGE_ID, CREATE_SESSION, an open and close,
        DESTROY_SESSION, DESTROY_CLIENTID) leave nothing behind: the tables
        are empty and the interpreter holds no more memory blocks than after
        the first thousand.
        """
        h = Harness()
        current = StateId(1, bytes(12))

        def cycle(i: int) -> None:
            cl = h.client()
            cl.exchange_id(b"cycle-%d" % i)
            cl.create_session()
            r = cl.compound(
                [(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))]
                + cl.path(b"export")
                + [cl.open_create(b"f%d" % (i % 7)), (c.OP_CLOSE, CloseArgs(0, current))]
            )
            assert r.status == c.NFS4_OK, r
            cl.raw([(c.OP_DESTROY_SESSION, SessionArgs(cl.sessionid))])
            cl.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(cl.clientid))])

        for i in range(1000):
            cycle(i)
        gc.collect()
        before = sys.getallocatedblocks()
        for i in range(1000, 10_000):
            cycle(i)
        gc.collect()
        grown = sys.getallocatedblocks() - before
        self.assertLess(grown, 2000, f"{grown} more memory blocks after 9,000 cycles")
        n4 = h.nfs4
        self.assertEqual((len(n4.clients), len(n4.clients.sessions), len(n4.ids)), (0, 0, 0))
        self.assertEqual(h.vfs.locks.records, 0)


class MachineDocsTests(SynchronousTestCase):
    def test_dot_files_current(self) -> None:
        """docs/nfs4-*.dot are what the machines are (regenerate with to_dot if this fails)."""
        import os

        from claudefs_gateway.nfs.v4.clients import ClientMachine, SessionMachine
        from claudefs_gateway.smb.negotiate import to_dot

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        for cls, name, path in (
            (ClientMachine, "nfs4_client", "docs/nfs4-client.dot"),
            (SessionMachine, "nfs4_session", "docs/nfs4-session.dot"),
        ):
            with open(os.path.join(root, path)) as f:
                self.assertEqual(f.read(), to_dot(cls, name), path)
