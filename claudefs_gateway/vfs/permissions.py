# -*- test-case-name: tests.vfs.test_permissions -*-
"""
POSIX permission rules, as pure functions of credentials and attributes.

These are Linux's rules (what a user of an NFS export on Linux expects):
mode bits for owner, group (primary or supplementary) and others; root may
read and write anything and execute anything with an execute bit (or any
directory); the sticky bit on a directory restricts deleting and renaming to
the entry's owner, the directory's owner and root; a setgid directory passes
its group (and, to subdirectories, the setgid bit) to new entries; chmod and
explicit times need ownership; chown of the owner needs root; a group may be
changed by the owner to one of their own groups. An ACL hook can later refine
L{may} without touching callers.
"""

from __future__ import annotations

import stat
from collections.abc import Callable

from claudefs_gateway import errors
from claudefs_gateway.fstypes import NOW, Attributes, Credentials, FileType, SetAttrs

__all__ = [
    "R",
    "W",
    "X",
    "AclHook",
    "may",
    "granted",
    "check",
    "check_sticky",
    "new_owner",
    "new_mode",
    "check_setattr",
    "strip_setid_on_write",
]

R, W, X = 4, 2, 1

# An ACL hook returns the granted rwx bits for (cred, attrs), or None to use mode bits.
AclHook = Callable[[Credentials, Attributes], int | None]


def granted(cred: Credentials, a: Attributes, acl: AclHook | None = None) -> int:
    """The rwx bits C{cred} holds on C{a}."""
    if acl is not None:
        bits = acl(cred, a)
        if bits is not None:
            return bits
    if cred.is_root:
        any_x = a.type is FileType.DIR or bool(a.mode & 0o111)
        return R | W | (X if any_x else 0)
    if cred.uid == a.uid:
        return (a.mode >> 6) & 7
    if cred.in_group(a.gid):
        return (a.mode >> 3) & 7
    return a.mode & 7


def may(cred: Credentials, a: Attributes, mask: int, acl: AclHook | None = None) -> bool:
    """True if C{cred} holds every bit of C{mask} (R/W/X) on C{a}."""
    return granted(cred, a, acl) & mask == mask


def check(cred: Credentials, a: Attributes, mask: int, acl: AclHook | None = None) -> None:
    """@raise Access: C{cred} lacks a bit of C{mask} on C{a}."""
    if not may(cred, a, mask, acl):
        raise errors.Access(f"access {mask:o} denied on inode {a.ino}")


def check_sticky(cred: Credentials, directory: Attributes, entry: Attributes) -> None:
    """
    Removing or renaming C{entry} out of a sticky C{directory}.

    @raise Perm: the caller owns neither the entry nor the directory (and is not root).
    """
    if (
        directory.mode & stat.S_ISVTX
        and not cred.is_root
        and cred.uid not in (directory.uid, entry.uid)
    ):
        raise errors.Perm("sticky directory")


def new_owner(cred: Credentials, parent: Attributes) -> tuple[int, int]:
    """(uid, gid) of a new entry: the caller's, but the group of a setgid directory."""
    gid = parent.gid if parent.mode & stat.S_ISGID else cred.gid
    return cred.uid, gid


def new_mode(cred: Credentials, parent: Attributes, mode: int, type: FileType, gid: int) -> int:
    """
    The mode a new entry gets: subdirectories of a setgid directory inherit setgid;
    a non-root caller cannot create a setgid file in a group they are not in.
    """
    mode &= 0o7777
    if type is FileType.DIR and parent.mode & stat.S_ISGID:
        mode |= stat.S_ISGID
    elif (
        mode & stat.S_ISGID
        and not cred.is_root
        and not cred.in_group(gid)
        and type is not FileType.DIR
    ):
        mode &= ~stat.S_ISGID
    return mode


def check_setattr(
    cred: Credentials, a: Attributes, changes: SetAttrs, acl: AclHook | None = None
) -> SetAttrs:
    """
    Check C{changes} against Linux's rules and return what to apply.

    Returns the changes with consequences added: setgid dropped from a chmod by
    a non-member, setuid/setgid dropped from a regular file whose owner or group
    a non-root caller changes.

    @raise Perm: chmod, chown or explicit times by someone who may not.
    @raise Access: truncation, or "set times to now", without write permission.
    """
    owner = cred.is_root or cred.uid == a.uid
    mode = changes.mode
    if changes.uid is not None and changes.uid != a.uid and not cred.is_root:
        raise errors.Perm("only root may change the owner")
    if changes.gid is not None and changes.gid != a.gid and not cred.is_root:
        if cred.uid != a.uid or not cred.in_group(changes.gid):
            raise errors.Perm("only the owner may change the group, to one of their groups")
    if mode is not None:
        if not owner:
            raise errors.Perm("only the owner may change the mode")
        gid = changes.gid if changes.gid is not None else a.gid
        if (
            not cred.is_root
            and mode & stat.S_ISGID
            and a.type is not FileType.DIR
            and not cred.in_group(gid)
        ):
            mode &= ~stat.S_ISGID
    if changes.size is not None:
        check(cred, a, W, acl)
    for t in (changes.atime, changes.mtime):
        if t is None:
            continue
        if t is NOW:
            if not owner and not may(cred, a, W, acl):
                raise errors.Access("setting times to now needs ownership or write permission")
        elif not owner:
            raise errors.Perm("only the owner may set explicit times")
    if changes.btime is not None and not owner:
        raise errors.Perm("only the owner may set the creation time")
    chown = (changes.uid is not None and changes.uid != a.uid) or (
        changes.gid is not None and changes.gid != a.gid
    )
    if chown and a.type is FileType.REG and not cred.is_root:
        base = mode if mode is not None else a.mode
        if base & (stat.S_ISUID | stat.S_ISGID):
            mode = base & ~(stat.S_ISUID | stat.S_ISGID)
    if mode is not changes.mode:
        return SetAttrs(
            mode=mode,
            uid=changes.uid,
            gid=changes.gid,
            size=changes.size,
            atime=changes.atime,
            mtime=changes.mtime,
            btime=changes.btime,
        )
    return changes


def strip_setid_on_write(cred: Credentials, a: Attributes) -> int | None:
    """
    The mode to set after a non-root write to a setuid/setgid file (Linux's
    "kill privileges" on write), or None if nothing changes.
    """
    if cred.is_root or a.type is not FileType.REG:
        return None
    bits = stat.S_ISUID
    # setgid without group execute is mandatory-locking marking, which Linux keeps.
    if a.mode & stat.S_IXGRP:
        bits |= stat.S_ISGID
    if a.mode & bits:
        return a.mode & ~bits
    return None
