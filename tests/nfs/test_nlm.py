"""
NLM v4 (L{claudefs_gateway.nfs.nlm}) over the real lock table: TEST, LOCK
(blocking, with GRANTED callbacks), CANCEL, UNLOCK, SHARE/UNSHARE, NM_LOCK,
FREE_ALL, the *_MSG forms, grace, and conflicts with SMB and NFSv4 owners.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.nfs.errors import NLM4
from claudefs_gateway.nfs.nlm import GRANTED, GRANTED_MSG, LOCK_RES, NLM, NlmLock, dec_testargs
from claudefs_gateway.nfs.nsm import MemoryStore, StatusMonitor
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.server import Program
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.vfs.locks import LockOwner, LockTable
from tests.nfs.harness import Harness


class FakeCallbacks:
    """Records calls to clients; the test answers each (or lets it fail)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int, bytes, defer.Deferred[Unpacker]]] = []

    def call(
        self, host: str, prog: int, vers: int, proc: int, args: bytes
    ) -> defer.Deferred[Unpacker]:
        d: defer.Deferred[Unpacker] = defer.Deferred()
        self.calls.append((host, prog, vers, proc, args, d))
        return d

    def answer(self, i: int, cookie: bytes, stat: int) -> None:
        p = Packer()
        p.opaque(cookie)
        p.u32(stat)
        self.calls[i][5].callback(Unpacker(p.bytes()))


class NLMTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.callbacks = FakeCallbacks()
        self.store = MemoryStore()

        def programs(h: Harness) -> list[Program]:
            h.vfs.locks = self.locks = LockTable(h.m.clock)
            self.nlm = NLM(h.ctx, self.callbacks)
            self.nsm = StatusMonitor(self.store, self.nlm, self.callbacks, 30)
            return [self.nlm.program(), self.nsm.program()]

        self.h = Harness(extra=programs)
        root = self.h.root()
        nfs = self.h.client(0, 0)
        r = nfs.create(root, b"locked", c.GUARDED)
        self.fh = r.fh
        self.ino = r.attrs.fileid
        nfs.write(self.fh, 0, b"x" * 100)
        self.a = self.h.nlm_client("10.0.0.1")
        self.b = self.h.nlm_client("10.0.0.2")

    def lk(self, who: str, start: int = 0, length: int = 10, fh: bytes | None = None) -> NlmLock:
        svid = {"a": 11, "b": 22}[who]
        return NlmLock(
            f"host-{who}".encode(), fh or self.fh, f"oh-{who}".encode(), svid, start, length
        )


class LockTests(NLMTestCase):
    def test_lock_test_unlock(self) -> None:
        self.assertEqual(self.a.lock(self.lk("a"), exclusive=True).status, NLM4.GRANTED)
        t = self.b.test(self.lk("b", 5, 1))
        self.assertEqual(t.status, NLM4.DENIED)
        self.assertEqual(
            (t.holder.exclusive, t.holder.svid, t.holder.oh, t.holder.offset, t.holder.length),
            (True, 11, b"oh-a", 0, 10),
        )
        self.assertEqual(self.a.test(self.lk("a", 5, 1)).status, NLM4.GRANTED)
        self.assertEqual(self.b.test(self.lk("b", 10, 5)).status, NLM4.GRANTED)
        self.assertEqual(self.b.lock(self.lk("b", 5, 1)).status, NLM4.DENIED)
        self.assertEqual(self.a.unlock(self.lk("a")).status, NLM4.GRANTED)
        self.assertEqual(self.b.test(self.lk("b", 5, 1)).status, NLM4.GRANTED)
        self.assertEqual(self.b.lock(self.lk("b", 5, 1)).cookie, b"c")

    def test_shared_locks(self) -> None:
        self.assertEqual(self.a.lock(self.lk("a"), exclusive=False).status, NLM4.GRANTED)
        self.assertEqual(self.b.lock(self.lk("b"), exclusive=False).status, NLM4.GRANTED)
        self.assertEqual(self.b.lock(self.lk("b"), exclusive=True).status, NLM4.DENIED)
        self.assertEqual(len(self.locks.locks(self.ino)), 2)

    def test_to_end_of_file(self) -> None:
        """l_len 0 locks to end of file."""
        self.assertEqual(self.a.lock(self.lk("a", 50, 0)).status, NLM4.GRANTED)
        self.assertEqual(self.b.test(self.lk("b", 2**40, 1)).status, NLM4.DENIED)
        self.assertEqual(self.b.test(self.lk("b", 0, 50)).status, NLM4.GRANTED)

    def test_blocking_lock_granted_by_callback(self) -> None:
        """A blocked LOCK answers BLOCKED; when the holder unlocks, the waiter gets GRANTED."""
        self.a.lock(self.lk("a"))
        r = self.b.lock(self.lk("b"), block=True, cookie=b"bk")
        self.assertEqual(r.status, NLM4.BLOCKED)
        # A retransmission does not queue twice.
        self.assertEqual(self.b.lock(self.lk("b"), block=True, cookie=b"bk").status, NLM4.BLOCKED)
        self.assertEqual(len(self.locks.waiting(self.ino)), 1)
        self.assertEqual(self.callbacks.calls, [])
        self.a.unlock(self.lk("a"))
        self.assertEqual(len(self.callbacks.calls), 1)
        host, prog, vers, proc, args, _ = self.callbacks.calls[0]
        self.assertEqual((host, prog, vers, proc), ("10.0.0.2", 100021, 4, GRANTED))
        got = dec_testargs(Unpacker(args))
        self.assertEqual((got.cookie, got.lock), (b"bk", self.lk("b")))
        self.callbacks.answer(0, b"bk", NLM4.GRANTED)
        holders = {lk.owner.client for lk in self.locks.locks(self.ino)}
        self.assertEqual(holders, {b"host-b"})
        self.assertEqual(self.nlm.pending, {})

    def test_grant_released_when_client_unreachable(self) -> None:
        self.a.lock(self.lk("a"))
        self.b.lock(self.lk("b"), block=True)
        self.a.unlock(self.lk("a"))
        self.callbacks.calls[0][5].errback(defer.TimeoutError("no reply"))
        self.assertEqual(self.locks.locks(self.ino), [])

    def test_grant_released_when_client_refuses(self) -> None:
        self.a.lock(self.lk("a"))
        self.b.lock(self.lk("b"), block=True)
        self.a.unlock(self.lk("a"))
        self.callbacks.answer(0, b"c", NLM4.DENIED)
        self.assertEqual(self.locks.locks(self.ino), [])

    def test_cancel(self) -> None:
        self.a.lock(self.lk("a"))
        self.b.lock(self.lk("b"), block=True)
        self.assertEqual(self.b.cancel(self.lk("b")).status, NLM4.GRANTED)
        self.assertEqual(self.locks.waiting(self.ino), [])
        self.a.unlock(self.lk("a"))
        self.assertEqual(self.callbacks.calls, [])
        self.assertEqual(self.b.cancel(self.lk("b")).status, NLM4.GRANTED)

    def test_nm_lock_never_blocks(self) -> None:
        self.a.lock(self.lk("a"))
        r = self.b.lock(self.lk("b"), block=True, proc=22)
        self.assertEqual(r.status, NLM4.DENIED)
        self.assertEqual(self.store.writes, 0)

    def test_deadlock(self) -> None:
        self.a.lock(self.lk("a", 0, 10))
        self.b.lock(self.lk("b", 20, 10))
        self.assertEqual(self.a.lock(self.lk("a", 20, 10), block=True).status, NLM4.BLOCKED)
        self.assertEqual(self.b.lock(self.lk("b", 0, 10), block=True).status, NLM4.DEADLCK)

    def test_stale_and_bad_handles(self) -> None:
        nfs = self.h.client(0, 0)
        root = self.h.root()
        nfs.remove(root, b"locked")
        self.assertEqual(self.a.lock(self.lk("a")).status, NLM4.STALE_FH)
        self.assertEqual(self.a.test(self.lk("a", fh=b"\0" * 33)).status, NLM4.STALE_FH)

    def test_waiter_on_deleted_file(self) -> None:
        self.a.lock(self.lk("a"))
        self.b.lock(self.lk("b"), block=True)
        self.h.client(0, 0).remove(self.h.root(), b"locked")
        self.assertEqual(self.nlm.pending, {})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_export_rules(self) -> None:
        """A client outside the export's networks gets NLM4_FAILED."""
        lan_fh = self.h.client(0, 0, host="10.1.1.1").mnt(b"/lan").fh
        outside = self.h.nlm_client("192.168.9.9")
        self.assertEqual(outside.lock(self.lk("a", fh=lan_fh)).status, NLM4.FAILED)
        self.assertEqual(self.a.lock(self.lk("a", fh=lan_fh)).status, NLM4.GRANTED)

    def test_client_granted_call_refused(self) -> None:
        self.assertEqual(self.a.granted(self.lk("a")).status, NLM4.DENIED)


class DecidingLocks:
    """
    A lock table whose blocking requests are decided later, as a table shared
    through a meta server decides them (vfs/shared.py): the test settles each
    one, forwarding it to the real table or failing it.
    """

    def __init__(self, table: LockTable) -> None:
        self.table = table
        self.asked: list[tuple[defer.Deferred[Any], tuple[Any, ...], Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    def lock(
        self, *args: Any, wait: bool = False, reclaim: bool = False, on_wait: Any = None
    ) -> Any:
        if not wait:
            return self.table.lock(*args, reclaim=reclaim)
        d: defer.Deferred[Any] = defer.Deferred()
        self.asked.append((d, args, reclaim, on_wait))
        return d

    def forward(self, i: int = -1) -> None:
        d, args, reclaim, on_wait = self.asked[i]
        self.table.lock(*args, wait=True, reclaim=reclaim, on_wait=on_wait).chainDeferred(d)


class SharedTableTests(NLMTestCase):
    """
    A blocking LOCK on a table that decides later (several gateways on one
    meta server) answers BLOCKED only once the request waits there: NLM has
    no way to tell a client already told BLOCKED of a deadlock found after.
    """

    def setUp(self) -> None:
        super().setUp()
        self.deciding = DecidingLocks(self.locks)
        self.h.vfs.locks = self.deciding  # type: ignore[assignment]
        self.later = self.h.nlm_client_deferred("10.0.0.2")

    def test_deadlock_found_after_the_request_is_sent(self) -> None:
        """The meta server refuses the wait as a deadlock: the reply is DEADLCK, not BLOCKED."""
        self.a.lock(self.lk("a"))
        reply = self.later.lock(self.lk("b"), block=True)
        self.assertNoResult(reply)
        d = self.deciding.asked[0][0]
        d.errback(errors.Deadlock("lock would deadlock"))
        self.assertEqual(self.successResultOf(reply).status, NLM4.DEADLCK)
        self.assertEqual(self.nlm.pending, {})
        self.assertEqual(self.callbacks.calls, [])

    def test_blocked_once_waiting_then_granted_by_callback(self) -> None:
        self.a.lock(self.lk("a"))
        reply = self.later.lock(self.lk("b"), block=True, cookie=b"bk")
        # A retransmission while it is being decided queues nothing more.
        again = self.later.lock(self.lk("b"), block=True, cookie=b"bk")
        self.assertEqual(self.successResultOf(again).status, NLM4.BLOCKED)
        self.assertEqual(len(self.deciding.asked), 1)
        self.assertNoResult(reply)
        self.deciding.forward()
        self.assertEqual(self.successResultOf(reply).status, NLM4.BLOCKED)
        self.assertEqual(len(self.nlm.pending), 1)
        self.a.unlock(self.lk("a"))
        self.assertEqual(len(self.callbacks.calls), 1)
        self.assertEqual(self.callbacks.calls[0][3], GRANTED)
        self.callbacks.answer(0, b"bk", NLM4.GRANTED)
        self.assertEqual({lk.owner.client for lk in self.locks.locks(self.ino)}, {b"host-b"})
        self.assertEqual(self.nlm.pending, {})

    def test_granted_while_deciding_answers_granted(self) -> None:
        """A blocking request the meta server grants straight away needs no GRANTED callback."""
        reply = self.later.lock(self.lk("b"), block=True)
        self.assertNoResult(reply)
        self.deciding.forward()
        self.assertEqual(self.successResultOf(reply).status, NLM4.GRANTED)
        self.assertEqual(self.callbacks.calls, [])
        self.assertEqual(self.nlm.pending, {})

    def test_cancelled_while_deciding(self) -> None:
        self.a.lock(self.lk("a"))
        reply = self.later.lock(self.lk("b"), block=True)
        self.assertEqual(self.b.cancel(self.lk("b")).status, NLM4.GRANTED)
        self.assertEqual(self.successResultOf(reply).status, NLM4.DENIED)
        self.assertEqual(self.nlm.pending, {})


class CrossProtocolTests(NLMTestCase):
    def test_smb_lock_refuses_nlm(self) -> None:
        """An SMB lock on the same bytes refuses an NLM lock, and TEST reports it (svid 0)."""
        smb = LockOwner("smb", "session-1", b"fileid")
        self.successResultOf(self.locks.lock(self.ino, smb, 0, 10, True))
        self.assertEqual(self.a.lock(self.lk("a", 5, 5)).status, NLM4.DENIED)
        t = self.a.test(self.lk("a", 5, 5))
        self.assertEqual((t.status, t.holder.svid, t.holder.oh), (NLM4.DENIED, 0, b""))

    def test_nlm_lock_refuses_smb_and_nfs4(self) -> None:
        self.assertEqual(self.a.lock(self.lk("a", 0, 10), exclusive=False).status, NLM4.GRANTED)
        for proto in ("smb", "nfs4"):
            other = LockOwner(proto, "x", b"y")
            self.failureResultOf(self.locks.lock(self.ino, other, 5, 1, True), errors.LockConflict)
            self.successResultOf(self.locks.lock(self.ino, other, 5, 1, False))

    def test_nfs4_waiter_granted_after_nlm_unlock(self) -> None:
        self.a.lock(self.lk("a"))
        nfs4 = LockOwner("nfs4", "client", b"owner")
        d = self.locks.lock(self.ino, nfs4, 0, 1, True, wait=True)
        self.assertNoResult(d)
        self.a.unlock(self.lk("a"))
        self.assertEqual(self.successResultOf(d).owner, nfs4)


class ShareTests(NLMTestCase):
    def test_share_and_unshare(self) -> None:
        # a reads and denies write; b wants to write.
        self.assertEqual(
            self.a.share(b"host-a", self.fh, b"oa", mode=2, access=1).status, NLM4.GRANTED
        )
        self.assertEqual(
            self.b.share(b"host-b", self.fh, b"ob", mode=0, access=2).status, NLM4.DENIED
        )
        self.assertEqual(
            self.b.share(b"host-b", self.fh, b"ob", mode=0, access=1).status, NLM4.GRANTED
        )
        self.assertEqual(
            self.a.share(b"host-a", self.fh, b"oa", mode=2, access=1, unshare=True).status,
            NLM4.GRANTED,
        )
        self.assertEqual(
            self.b.share(b"host-b", self.fh, b"ob2", mode=0, access=2).status, NLM4.GRANTED
        )

    def test_share_conflicts_with_smb_open(self) -> None:
        smb = LockOwner("smb", "s", b"f")
        self.locks.open_share(self.ino, smb, {"read", "write"}, {"write"})
        self.assertEqual(
            self.a.share(b"host-a", self.fh, b"oa", mode=0, access=2).status, NLM4.DENIED
        )

    def test_bad_share_mode_is_garbage(self) -> None:
        from claudefs_gateway.rpc.client import RPCError

        self.assertRaises(RPCError, self.a.share, b"host-a", self.fh, b"oa", 7, 1)


class FreeAllTests(NLMTestCase):
    def test_free_all_releases_locks_shares_and_waiters(self) -> None:
        self.b.lock(self.lk("b", 50, 10))
        self.a.lock(self.lk("a"))
        self.a.share(b"host-a", self.fh, b"oa", mode=3, access=3)
        self.b.lock(self.lk("b"), block=True)
        self.a.lock(self.lk("a", 50, 10), block=True)
        self.a.free_all(b"host-a")
        self.assertEqual({lk.owner.client for lk in self.locks.locks(self.ino)}, {b"host-b"})
        self.assertEqual(self.locks.shares(self.ino), [])
        self.assertEqual(len(self.callbacks.calls), 1)  # b's waiter was granted
        self.assertEqual([k[0].client for k in self.nlm.pending], [])


class MsgTests(NLMTestCase):
    def test_lock_msg_answers_with_lock_res(self) -> None:
        self.assertIsNone(self.a.lock(self.lk("a"), cookie=b"m1", proc=7))
        host, prog, vers, proc, args, _ = self.callbacks.calls[0]
        self.assertEqual((host, proc), ("10.0.0.1", LOCK_RES))
        u = Unpacker(args)
        self.assertEqual((u.opaque(1024), u.u32()), (b"m1", NLM4.GRANTED))

    def test_blocked_lock_msg_granted_by_granted_msg(self) -> None:
        self.a.lock(self.lk("a"))
        self.b.lock(self.lk("b"), block=True, cookie=b"m2", proc=7)
        self.callbacks.calls[0][5].callback(Unpacker(b""))  # LOCK_RES delivered
        self.a.unlock(self.lk("a"))
        self.assertEqual(self.callbacks.calls[1][3], GRANTED_MSG)
        self.callbacks.calls[1][5].callback(Unpacker(b""))
        self.assertEqual(len(self.locks.locks(self.ino)), 1)
        # The client answers GRANTED_RES with DENIED: it no longer wants it.
        self.b.granted_res(b"m2", NLM4.DENIED)
        self.assertEqual(self.locks.locks(self.ino), [])


class GraceTests(NLMTestCase):
    def test_grace(self) -> None:
        """During grace only reclaims pass; TEST is refused; afterwards a reclaim is refused."""
        self.locks.start_grace(30)
        self.assertEqual(self.a.lock(self.lk("a")).status, NLM4.DENIED_GRACE_PERIOD)
        self.assertEqual(self.a.test(self.lk("a")).status, NLM4.DENIED_GRACE_PERIOD)
        self.assertEqual(self.a.lock(self.lk("a"), reclaim=True).status, NLM4.GRANTED)
        self.assertEqual(self.a.unlock(self.lk("a")).status, NLM4.GRANTED)
        self.assertEqual(
            self.a.share(b"host-a", self.fh, b"o", 0, 1).status, NLM4.DENIED_GRACE_PERIOD
        )
        self.h.m.clock.advance(31)
        self.assertEqual(self.a.lock(self.lk("a"), reclaim=True).status, NLM4.DENIED_GRACE_PERIOD)
        self.assertEqual(self.a.lock(self.lk("a")).status, NLM4.GRANTED)


class MonitorTests(NLMTestCase):
    def test_lock_clients_recorded(self) -> None:
        self.successResultOf(defer.Deferred.fromCoroutine(self.nsm.start(self.locks)))
        self.a.lock(self.lk("a"))
        self.b.share(b"host-b", self.fh, b"ob", 0, 1)
        assert self.store.doc is not None
        self.assertEqual(
            self.store.doc["clients"],
            {
                "host-a": {"addr": "10.0.0.1", "server": None},
                "host-b": {"addr": "10.0.0.2", "server": None},
            },
        )
        self.a.free_all(b"host-a")
        self.assertEqual(list(self.store.doc["clients"]), ["host-b"])

    def test_sm_notify_from_client_releases_its_locks(self) -> None:
        self.a.lock(self.lk("a"))
        self.b.lock(self.lk("b", 20, 5))
        self.a.sm_notify(b"host-a", 3)
        self.assertEqual({lk.owner.client for lk in self.locks.locks(self.ino)}, {b"host-b"})

    def test_sm_notify_matches_the_sender_address(self) -> None:
        self.successResultOf(defer.Deferred.fromCoroutine(self.nsm.start(self.locks)))
        self.a.lock(self.lk("a"))
        self.a.sm_notify(b"some-other-spelling", 5)
        self.assertEqual(self.locks.locks(self.ino), [])

    def test_nsm_procedures(self) -> None:
        self.assertEqual(self.a.sm_stat(b"x").status, 0)
        self.assertEqual(self.a.sm_mon(b"x").status, 1)
