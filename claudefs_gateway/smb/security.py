# -*- test-case-name: tests.smb.test_security -*-
"""
Windows identities for POSIX owners: SIDs for uids and gids, and security
descriptors made from (uid, gid, mode) and back ([MS-DTYP] 2.4.2, 2.4.6).

Mapping (what Samba calls an algorithmic RID mapping, with its Unix fallback):

  - a uid that belongs to a user in the database ↔ ``<domain SID>-<1000 + 2*uid>``;
  - a gid that is a database user's primary or supplementary group ↔
    ``<domain SID>-<1001 + 2*gid>``;
  - any other uid ↔ ``S-1-22-1-<uid>`` and gid ↔ ``S-1-22-2-<gid>`` (Samba's
    "Unix User" and "Unix Group" authorities, which Windows shows as such).

The domain SID is C{smb.domain_sid}, or derived from the gateway's install
secret so it is stable for one installation and differs between them.

A file nobody set a descriptor on shows one made from its mode bits: allow
ACEs for the owner, the group and Everyone with the rights rwx grant.
Setting one maps it to the mode (L{mode_from_dacl}): owner and group SIDs
become a chown, the ACEs for the owner, the group and Everyone become rwx
bits, which NFS and S3 check. The descriptor itself is kept beside the
inode as Samba's acl_xattr keeps it (L{claudefs_gateway.smb.filebase}),
with every ACE, and shown as set while the owner, group and mode are still
what it mapped to; SMB access checks then honour both the mode and the
DACL (L{dacl_access}).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable

import attrs

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c

__all__ = [
    "SID",
    "Ace",
    "ParsedDescriptor",
    "mode_descriptor",
    "pack_descriptor",
    "dacl_access",
    "map_generic",
    "IdMap",
    "EVERYONE",
    "security_descriptor",
    "parse_security_descriptor",
    "access_for_mode",
    "mode_from_dacl",
    "derive_domain_sid",
]


@attrs.frozen(order=True)
class SID:
    """A security identifier: authority and sub-authorities."""

    authority: int
    subs: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> SID:
        m = re.fullmatch(r"S-1-(\d+)((?:-\d+)*)", text)
        if m is None:
            raise ValueError(f"not a SID: {text!r}")
        subs = tuple(int(x) for x in m.group(2).split("-")[1:])
        if len(subs) > 15 or any(s > 0xFFFFFFFF for s in subs):
            raise ValueError(f"not a SID: {text!r}")
        return cls(int(m.group(1)), subs)

    def __str__(self) -> str:
        return "S-1-" + "-".join(str(x) for x in (self.authority, *self.subs))

    def pack(self) -> bytes:
        return (
            struct.pack("<BB", 1, len(self.subs))
            + self.authority.to_bytes(6, "big")
            + b"".join(struct.pack("<I", s) for s in self.subs)
        )

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> tuple[SID, int]:
        """The SID at C{offset} and its size. @raise ProtocolError: truncated or not revision 1."""
        if offset < 0 or offset + 8 > len(data):
            raise ProtocolError("SID truncated")
        rev, count = data[offset], data[offset + 1]
        if rev != 1 or count > 15:
            raise ProtocolError("bad SID")
        size = 8 + 4 * count
        if offset + size > len(data):
            raise ProtocolError("SID truncated")
        authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
        subs = struct.unpack_from(f"<{count}I", data, offset + 8)
        return cls(authority, tuple(subs)), size

    def child(self, rid: int) -> SID:
        return SID(self.authority, (*self.subs, rid))


EVERYONE = SID(1, (0,))
AUTHENTICATED_USERS = SID(5, (11,))
ANONYMOUS = SID(5, (7,))
UNIX_USERS = SID(22, (1,))
UNIX_GROUPS = SID(22, (2,))
_USER_RID_BASE = 1000


def derive_domain_sid(secret: bytes) -> SID:
    """A stable S-1-5-21-a-b-c from the install secret (never revealing it)."""
    digest = hashlib.sha256(b"claudefs smb domain sid\x00" + secret).digest()
    a, b, cc = struct.unpack_from("<III", digest)
    return SID(5, (21, a, b, cc))


class IdMap:
    """
    uid/gid ↔ SID (see the module docstring).

    @param known_uid: whether a uid belongs to a user in the database.
    @param known_gid: whether a gid is a database user's group.
    """

    def __init__(
        self,
        domain: SID,
        known_uid: Callable[[int], bool] = lambda uid: False,
        known_gid: Callable[[int], bool] = lambda gid: False,
    ) -> None:
        self.domain = domain
        self._known_uid = known_uid
        self._known_gid = known_gid

    def uid_sid(self, uid: int) -> SID:
        if self._known_uid(uid):
            return self.domain.child(_USER_RID_BASE + 2 * uid)
        return UNIX_USERS.child(uid)

    def gid_sid(self, gid: int) -> SID:
        if self._known_gid(gid):
            return self.domain.child(_USER_RID_BASE + 1 + 2 * gid)
        return UNIX_GROUPS.child(gid)

    def to_unix(self, sid: SID) -> tuple[str, int] | None:
        """C{("uid", n)}, C{("gid", n)} or None for a SID that maps to neither."""
        if sid.authority == 22 and len(sid.subs) == 2:
            kind = {1: "uid", 2: "gid"}.get(sid.subs[0])
            return (kind, sid.subs[1]) if kind else None
        if (
            sid.authority == self.domain.authority
            and sid.subs[:-1] == self.domain.subs
            and len(sid.subs) == len(self.domain.subs) + 1
            and sid.subs[-1] >= _USER_RID_BASE
        ):
            rid = sid.subs[-1] - _USER_RID_BASE
            return ("gid", rid // 2) if rid % 2 else ("uid", rid // 2)
        return None


# -- rights for mode bits ---------------------------------------------------------------

_READ = c.FILE_GENERIC_READ
_WRITE = c.FILE_GENERIC_WRITE
_EXEC = c.FILE_GENERIC_EXECUTE


def access_for_mode(bits: int, is_dir: bool, owner: bool) -> int:
    """The access mask rwx C{bits} (0-7) grant; an owner may also change permissions."""
    mask = 0
    if bits & 4:
        mask |= _READ
    if bits & 2:
        mask |= _WRITE
        if is_dir and bits & 1:
            mask |= c.FILE_DELETE_CHILD
    if bits & 1:
        mask |= _EXEC
    if owner:
        mask |= c.READ_CONTROL | c.WRITE_DAC | c.WRITE_OWNER | c.DELETE | c.FILE_READ_ATTRIBUTES
        mask |= c.FILE_WRITE_ATTRIBUTES | c.SYNCHRONIZE
    return mask


def _bits_for_access(mask: int) -> int:
    bits = 0
    if mask & (c.FILE_READ_DATA | c.GENERIC_READ | c.GENERIC_ALL):
        bits |= 4
    if mask & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA | c.GENERIC_WRITE | c.GENERIC_ALL):
        bits |= 2
    if mask & (c.FILE_EXECUTE | c.GENERIC_EXECUTE | c.GENERIC_ALL):
        bits |= 1
    return bits


# -- descriptors ----------------------------------------------------------------------------

SE_DACL_PRESENT = 0x0004
SE_SACL_PRESENT = 0x0010
SE_SACL_AUTO_INHERITED = 0x0800
SE_SACL_PROTECTED = 0x2000
SE_SELF_RELATIVE = 0x8000
#: Control bits that belong to the SACL (never kept: SACLs are not served).
_SACL_CONTROL = SE_SACL_PRESENT | 0x0020 | SE_SACL_AUTO_INHERITED | SE_SACL_PROTECTED
ACCESS_ALLOWED_ACE_TYPE = 0x00
ACCESS_DENIED_ACE_TYPE = 0x01
_INHERIT_FLAGS = 0x1F  # object/container inherit, no-propagate, inherit-only, inherited


def _ace(kind: int, flags: int, mask: int, sid: SID) -> bytes:
    body = struct.pack("<I", mask) + sid.pack()
    return struct.pack("<BBH", kind, flags, 4 + len(body)) + body


Ace = tuple[int, int, int, SID]  # (type, flags, mask, sid)


@attrs.frozen
class ParsedDescriptor:
    """
    @ivar dacl: the ACEs; None for no DACL, which with C{dacl_present} is a
        NULL DACL (everyone may do everything) and without it says nothing.
    @ivar control: the descriptor's control bits (SE_DACL_PROTECTED and the
        like), as the client set them.
    """

    owner: SID | None
    group: SID | None
    dacl: tuple[Ace, ...] | None
    dacl_present: bool = False
    control: int = SE_SELF_RELATIVE


def mode_descriptor(idmap: IdMap, uid: int, gid: int, mode: int, is_dir: bool) -> ParsedDescriptor:
    """The descriptor the mode bits stand for (see the module docstring)."""
    aces = (
        (0, 0, access_for_mode((mode >> 6) & 7, is_dir, True), idmap.uid_sid(uid)),
        (0, 0, access_for_mode((mode >> 3) & 7, is_dir, False), idmap.gid_sid(gid)),
        (0, 0, access_for_mode(mode & 7, is_dir, False), EVERYONE),
    )
    return ParsedDescriptor(
        idmap.uid_sid(uid), idmap.gid_sid(gid), aces, True, SE_SELF_RELATIVE | SE_DACL_PRESENT
    )


def pack_descriptor(sd: ParsedDescriptor, wanted: int) -> bytes:
    """
    A self-relative security descriptor (MS-DTYP 2.4.6) holding the parts
    C{wanted} (OWNER/GROUP/DACL_SECURITY_INFORMATION) names.
    """
    owner = sd.owner.pack() if wanted & c.OWNER_SECURITY_INFORMATION and sd.owner else b""
    group = sd.group.pack() if wanted & c.GROUP_SECURITY_INFORMATION and sd.group else b""
    dacl = b""
    control = (sd.control & ~(SE_DACL_PRESENT | _SACL_CONTROL)) | SE_SELF_RELATIVE
    if not wanted & c.DACL_SECURITY_INFORMATION:
        control &= ~_DACL_CONTROL
    elif sd.dacl_present:
        control |= SE_DACL_PRESENT
        if sd.dacl is not None:
            body = b"".join(_ace(kind, flags, mask, sid) for kind, flags, mask, sid in sd.dacl)
            dacl = struct.pack("<BBHHH", 2, 0, 8 + len(body), len(sd.dacl), 0) + body
    offset = 20
    offsets = []
    for part in (owner, group, dacl):
        offsets.append(offset if part else 0)
        offset += len(part)
    header = struct.pack("<BBHIIII", 1, 0, control, offsets[0], offsets[1], 0, offsets[2])
    return header + owner + group + dacl


def security_descriptor(
    idmap: IdMap, uid: int, gid: int, mode: int, is_dir: bool, wanted: int
) -> bytes:
    """The self-relative descriptor the mode bits stand for, the parts C{wanted} names."""
    return pack_descriptor(mode_descriptor(idmap, uid, gid, mode, is_dir), wanted)


#: Control bits that belong to the DACL.
_DACL_CONTROL = (
    0x0008 | 0x0100 | 0x0400 | 0x1000
)  # defaulted, inherit req, auto-inherited, protected


def parse_security_descriptor(data: bytes) -> ParsedDescriptor:
    """@raise ProtocolError: not a self-relative descriptor we can read."""
    if len(data) < 20:
        raise ProtocolError("security descriptor truncated")
    rev, _sbz, control, o_owner, o_group, _o_sacl, o_dacl = struct.unpack_from("<BBHIIII", data)
    if rev != 1 or not control & SE_SELF_RELATIVE:
        raise ProtocolError("not a self-relative security descriptor")
    owner = SID.unpack(data, o_owner)[0] if o_owner else None
    group = SID.unpack(data, o_group)[0] if o_group else None
    dacl: tuple[Ace, ...] | None = None
    if control & SE_DACL_PRESENT and o_dacl:
        if o_dacl + 8 > len(data):
            raise ProtocolError("ACL truncated")
        _arev, _s1, size, count, _s2 = struct.unpack_from("<BBHHH", data, o_dacl)
        end = o_dacl + size
        if end > len(data) or count > 1024:
            raise ProtocolError("ACL truncated")
        pos = o_dacl + 8
        aces = []
        for _ in range(count):
            if pos + 8 > end:
                raise ProtocolError("ACE truncated")
            kind, flags, ace_size = struct.unpack_from("<BBH", data, pos)
            if ace_size < 8 or pos + ace_size > end:
                raise ProtocolError("ACE truncated")
            if kind in (ACCESS_ALLOWED_ACE_TYPE, ACCESS_DENIED_ACE_TYPE):
                mask = struct.unpack_from("<I", data, pos + 4)[0]
                sid, _ = SID.unpack(data[: pos + ace_size], pos + 8)
                aces.append((kind, flags, mask, sid))
            else:
                raise ProtocolError(f"ACE type {kind} cannot be kept")
            pos += ace_size
        dacl = tuple(aces)
    return ParsedDescriptor(owner, group, dacl, bool(control & SE_DACL_PRESENT), control)


def mode_from_dacl(dacl: tuple[Ace, ...] | None, owner: SID, group: SID, old_mode: int) -> int:
    """
    The mode a DACL stands for. Allow ACEs for the owner, the group and
    Everyone set the rwx bits; deny ACEs for them take bits away;
    inherit-only ACEs (for children) add nothing now. ACEs for any other SID
    cannot be held in mode bits and add nothing to them (Windows clients add
    ones for SYSTEM and Administrators to everything they copy; the
    descriptor keeps them). A NULL DACL (None) lets everyone do everything:
    rwx for all. Setuid, setgid and sticky bits are kept.
    """
    if dacl is None:
        return (old_mode & 0o7000) | 0o777
    grants = {owner: 0, group: 0, EVERYONE: 0}
    denies = {owner: 0, group: 0, EVERYONE: 0}
    for kind, flags, mask, sid in dacl:
        if flags & 0x08 or sid not in grants:  # INHERIT_ONLY, or a SID mode bits cannot hold
            continue
        target = grants if kind == ACCESS_ALLOWED_ACE_TYPE else denies
        target[sid] |= _bits_for_access(mask)

    def bits(sid: SID) -> int:
        return grants[sid] & ~denies[sid]

    return (old_mode & 0o7000) | bits(owner) << 6 | bits(group) << 3 | bits(EVERYONE)


# -- access checks against a DACL -------------------------------------------------------------

_GENERIC = (
    (c.GENERIC_READ, c.FILE_GENERIC_READ),
    (c.GENERIC_WRITE, c.FILE_GENERIC_WRITE),
    (c.GENERIC_EXECUTE, c.FILE_GENERIC_EXECUTE),
    (c.GENERIC_ALL, c.FILE_ALL_ACCESS),
)


def map_generic(mask: int) -> int:
    """An access mask with its generic rights mapped to the file rights (MS-DTYP 2.4.3)."""
    for generic, specific in _GENERIC:
        if mask & generic:
            mask = (mask & ~generic) | specific
    return mask


def dacl_access(dacl: tuple[Ace, ...] | None, token: frozenset[SID], owner: bool) -> int:
    """
    What a DACL grants someone whose token holds C{token} (MS-DTYP 2.5.3.2,
    the MAXIMUM_ALLOWED walk): ACEs in order, a deny taking away what no
    earlier allow gave. A NULL DACL grants everything; the owner may always
    read and change the descriptor (READ_CONTROL, WRITE_DAC).
    """
    if dacl is None:
        return c.FILE_ALL_ACCESS
    granted = denied = 0
    for kind, flags, mask, sid in dacl:
        if flags & 0x08 or sid not in token:  # INHERIT_ONLY: for children
            continue
        mask = map_generic(mask)
        if kind == ACCESS_ALLOWED_ACE_TYPE:
            granted |= mask & ~denied
        else:
            denied |= mask & ~granted
    if owner:
        granted |= c.READ_CONTROL | c.WRITE_DAC
    return granted
