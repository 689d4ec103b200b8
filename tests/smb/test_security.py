"""SIDs for uids and gids, and security descriptors made from mode bits (read back by impacket)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as s
from impacket.ldap import ldaptypes
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.security import (
    EVERYONE,
    SID,
    Ace,
    IdMap,
    ParsedDescriptor,
    dacl_access,
    derive_domain_sid,
    mode_from_dacl,
    pack_descriptor,
    parse_security_descriptor,
    security_descriptor,
)

DOMAIN = SID.parse("S-1-5-21-11-22-33")
ALL = c.OWNER_SECURITY_INFORMATION | c.GROUP_SECURITY_INFORMATION | c.DACL_SECURITY_INFORMATION


SIDS = s.builds(
    SID, s.integers(0, 2**48 - 1), s.lists(s.integers(0, 2**32 - 1), max_size=15).map(tuple)
)


def idmap() -> IdMap:
    return IdMap(DOMAIN, lambda uid: uid in (1000, 1001), lambda gid: gid == 1000)


class SIDTests(SynchronousTestCase):
    @given(s.integers(0, 2**48 - 1), s.lists(s.integers(0, 2**32 - 1), max_size=15))
    def test_round_trip(self, authority: int, subs: list[int]) -> None:
        sid = SID(authority, tuple(subs))
        raw = sid.pack()
        self.assertEqual(SID.unpack(raw), (sid, len(raw)))
        if authority < 2**32:
            self.assertEqual(SID.parse(str(sid)), sid)

    @given(s.binary(max_size=80), s.integers(0, 80))
    def test_garbage(self, data: bytes, offset: int) -> None:
        try:
            SID.unpack(data, offset)
        except ProtocolError:
            pass

    def test_parse_refuses(self) -> None:
        for text in (
            "S-1",
            "S-2-5",
            "S-1-5-x",
            "S-1-5-" + "-".join(["1"] * 16),
            "S-1-5-4294967296",
        ):
            self.assertRaises(ValueError, SID.parse, text)


class IdMapTests(SynchronousTestCase):
    def test_database_users_in_the_domain(self) -> None:
        """Users and groups of the database get domain RIDs; everyone else the Unix SIDs."""
        m = idmap()
        self.assertEqual(str(m.uid_sid(1000)), "S-1-5-21-11-22-33-3000")
        self.assertEqual(str(m.gid_sid(1000)), "S-1-5-21-11-22-33-3001")
        self.assertEqual(str(m.uid_sid(42)), "S-1-22-1-42")
        self.assertEqual(str(m.gid_sid(42)), "S-1-22-2-42")

    @given(s.integers(0, 2**31), s.booleans())
    def test_back(self, n: int, user: bool) -> None:
        m = IdMap(DOMAIN, lambda uid: uid % 2 == 0, lambda gid: gid % 3 == 0)
        sid = m.uid_sid(n) if user else m.gid_sid(n)
        self.assertEqual(m.to_unix(sid), ("uid" if user else "gid", n))

    def test_unmapped(self) -> None:
        m = idmap()
        for text in ("S-1-1-0", "S-1-5-18", "S-1-5-21-9-9-9-3000", "S-1-5-21-11-22-33-500"):
            self.assertIsNone(m.to_unix(SID.parse(text)))

    def test_derived_domain(self) -> None:
        a, b = derive_domain_sid(b"a" * 32), derive_domain_sid(b"b" * 32)
        self.assertNotEqual(a, b)
        self.assertEqual(a, derive_domain_sid(b"a" * 32))
        self.assertEqual(a.subs[0], 21)


class DescriptorTests(SynchronousTestCase):
    def test_impacket_reads_it(self) -> None:
        """Owner, group and three allow ACEs as impacket's parser sees them."""
        sd = security_descriptor(idmap(), 1000, 50, 0o754, False, ALL)
        d = ldaptypes.SR_SECURITY_DESCRIPTOR(data=sd)
        self.assertEqual(d["OwnerSid"].formatCanonical(), "S-1-5-21-11-22-33-3000")
        self.assertEqual(d["GroupSid"].formatCanonical(), "S-1-22-2-50")
        aces = [
            (a["Ace"]["Sid"].formatCanonical(), a["Ace"]["Mask"]["Mask"]) for a in d["Dacl"].aces
        ]
        self.assertEqual(
            [sid for sid, _ in aces], ["S-1-5-21-11-22-33-3000", "S-1-22-2-50", "S-1-1-0"]
        )
        self.assertTrue(aces[0][1] & c.WRITE_DAC)
        self.assertEqual(aces[2][1] & c.FILE_READ_DATA, c.FILE_READ_DATA)
        self.assertFalse(aces[2][1] & c.FILE_EXECUTE)

    def test_parts(self) -> None:
        sd = security_descriptor(idmap(), 1000, 50, 0o700, True, c.OWNER_SECURITY_INFORMATION)
        p = parse_security_descriptor(sd)
        self.assertEqual((p.group, p.dacl), (None, None))

    @given(s.integers(0, 0o7777), s.booleans())
    def test_mode_round_trip(self, mode: int, is_dir: bool) -> None:
        """A DACL we made maps back to the mode it came from."""
        m = idmap()
        sd = security_descriptor(m, 1000, 1000, mode, is_dir, ALL)
        p = parse_security_descriptor(sd)
        assert p.dacl is not None and p.owner is not None and p.group is not None
        self.assertEqual(mode_from_dacl(p.dacl, p.owner, p.group, mode & 0o7000), mode)

    def test_foreign_ace_left_out(self) -> None:
        """ACEs for SIDs mode bits cannot hold are left out; deny ACEs take bits away."""
        admins = SID.parse("S-1-5-32-544")
        owner, group = SID.parse("S-1-22-1-1"), SID.parse("S-1-22-2-1")
        self.assertEqual(mode_from_dacl(((0, 0, 0x1F01FF, admins),), owner, group, 0o4000), 0o4000)
        both = ((0, 0, 0x1F01FF, EVERYONE), (1, 0, 2, EVERYONE))
        self.assertEqual(mode_from_dacl(both, owner, group, 0), 0o5)
        self.assertEqual(mode_from_dacl(((0, 0x0B, 0x1F01FF, owner),), owner, group, 0), 0)

    @given(
        s.one_of(s.none(), SIDS),
        s.one_of(
            s.none(),
            s.lists(
                s.tuples(
                    s.sampled_from([0, 1]), s.integers(0, 255), s.integers(0, 2**32 - 1), SIDS
                ),
                max_size=8,
            ).map(tuple),
        ),
        s.booleans(),
    )
    def test_descriptor_round_trip(
        self, owner: SID | None, dacl: tuple[Ace, ...] | None, present: bool
    ) -> None:
        """What pack_descriptor packs, parse_security_descriptor reads back."""
        sd = ParsedDescriptor(
            owner, None, dacl if present else None, present, 0x8000 | (4 if present else 0)
        )
        got = parse_security_descriptor(pack_descriptor(sd, ALL))
        self.assertEqual((got.owner, got.dacl, got.dacl_present), (owner, sd.dacl, present))

    def test_dacl_access(self) -> None:
        """Deny before allow wins; allow before deny wins; generic rights map; NULL grants all."""
        me = SID.parse("S-1-22-1-7")
        token = frozenset({me, EVERYONE})
        dacl = ((1, 0, c.FILE_WRITE_DATA, me), (0, 0, c.GENERIC_ALL, EVERYONE))
        self.assertEqual(dacl_access(dacl, token, False), c.FILE_ALL_ACCESS & ~c.FILE_WRITE_DATA)
        dacl = ((0, 0, c.FILE_WRITE_DATA, me), (1, 0, c.FILE_WRITE_DATA, EVERYONE))
        self.assertEqual(dacl_access(dacl, token, False), c.FILE_WRITE_DATA)
        self.assertEqual(dacl_access((), token, True), c.READ_CONTROL | c.WRITE_DAC)
        self.assertEqual(dacl_access(((0, 0x08, c.GENERIC_ALL, me),), token, False), 0)
        self.assertEqual(dacl_access(None, token, False), c.FILE_ALL_ACCESS)

    @given(s.binary(max_size=200))
    def test_garbage(self, data: bytes) -> None:
        try:
            parse_security_descriptor(data)
        except ProtocolError:
            pass
