# -*- test-case-name: tests.s3.test_acl -*-
"""
S3 ACLs, mapped to and from the POSIX owner and mode every protocol shares.

A file or directory has one set of permissions, its owner and mode bits, which
NFS, SMB and S3 all obey (the vfs checks them for every request, run as the
caller's uid and gids). An S3 ACL is therefore translated into that mode,
and read back from it, rather than kept as a second permission system:

============================  ======================================  ======================
grantee                       on a bucket (directory)                 on an object (file)
============================  ======================================  ======================
the owner                     owner bits: READ r-x, WRITE -wx,        owner bits: READ r--,
                              FULL_CONTROL rwx                        FULL_CONTROL rw-
a user in the file's group    group bits (every member gets them)     group bits
AuthenticatedUsers, AllUsers  other bits                              other bits
============================  ======================================  ======================

Every bucket keeps the other-execute bit (0711 when private), so objects whose
own ACL opens them can be reached without listing the bucket, as in S3, where
an object's ACL alone decides who reads it. What the mode cannot say - that
"other" includes anonymous requests - is one stored flag: an C{AllUsers}
grant marks the file public, and an anonymous request (run as the export's
anonymous uid) is let through only where that flag or a bucket policy allows
it. Grants the mode cannot express are refused rather than approximated: a
grant to a single user outside the file's group (501 NotImplemented, naming
the group to use instead), C{READ_ACP}/C{WRITE_ACP} to anyone but the owner,
C{LogDelivery}, grants by e-mail address (no e-mail is in the users database:
400 UnresolvableGrantByEmailAddress).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import attrs

from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.owners import canonical_id

__all__ = [
    "ALL_USERS",
    "AUTH_USERS",
    "ACL_KEY",
    "Grant",
    "Mapped",
    "canned",
    "from_headers",
    "map_grants",
    "grants_of",
    "render",
    "parse_policy_xml",
]

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
PERMISSIONS = ("FULL_CONTROL", "READ", "WRITE", "READ_ACP", "WRITE_ACP")
ACL_KEY = b"s3.acl"
CANNED = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
    "log-delivery-write",
    "aws-exec-read",
)


@attrs.frozen
class Grant:
    """One grant: C{kind} is C{user} (canonical id), C{group} (URI) or C{email}."""

    kind: str
    id: str
    permission: str


@attrs.frozen
class Mapped:
    """What an ACL becomes: the mode (permission bits) and the public (AllUsers) permissions."""

    mode: int
    public: frozenset[str]


def canned(name: str, owner_id: str, bucket_owner_id: str | None = None) -> list[Grant]:
    """The grants a canned ACL stands for (AWS's table)."""
    own = [Grant("user", owner_id, "FULL_CONTROL")]
    if name == "private":
        return own
    if name == "public-read":
        return own + [Grant("group", ALL_USERS, "READ")]
    if name == "public-read-write":
        return own + [Grant("group", ALL_USERS, "READ"), Grant("group", ALL_USERS, "WRITE")]
    if name == "authenticated-read":
        return own + [Grant("group", AUTH_USERS, "READ")]
    if name in ("bucket-owner-read", "bucket-owner-full-control"):
        if bucket_owner_id is None or bucket_owner_id == owner_id:
            return own
        perm = "READ" if name == "bucket-owner-read" else "FULL_CONTROL"
        return own + [Grant("user", bucket_owner_id, perm)]
    if name == "log-delivery-write":
        return own + [
            Grant("group", LOG_DELIVERY, "WRITE"),
            Grant("group", LOG_DELIVERY, "READ_ACP"),
        ]
    if name == "aws-exec-read":
        raise S3Error(
            "NotImplemented", "The aws-exec-read canned ACL is not implemented by this gateway"
        )
    raise S3Error(
        "InvalidArgument", "Invalid canned ACL", ArgumentName="x-amz-acl", ArgumentValue=name
    )


_GRANT_HEADERS = {
    "x-amz-grant-read": "READ",
    "x-amz-grant-write": "WRITE",
    "x-amz-grant-read-acp": "READ_ACP",
    "x-amz-grant-write-acp": "WRITE_ACP",
    "x-amz-grant-full-control": "FULL_CONTROL",
}
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"?([^",]*)"?\s*(?:,|$)')


def from_headers(
    headers: dict[str, list[str]], owner_id: str, bucket_owner_id: str | None = None
) -> list[Grant] | None:
    """
    The grants C{x-amz-acl} or the C{x-amz-grant-*} headers ask for, or None
    if the request names none. The owner always keeps full control.

    @raise S3Error: InvalidRequest (both a canned ACL and grants), InvalidArgument.
    """
    canned_name = headers.get("x-amz-acl")
    explicit = [h for h in _GRANT_HEADERS if headers.get(h)]
    if canned_name and explicit:
        raise S3Error(
            "InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed"
        )
    if canned_name:
        return canned(canned_name[0].strip(), owner_id, bucket_owner_id)
    if not explicit:
        return None
    grants = []
    for h in explicit:
        value = headers[h][0]
        pos = 0
        while pos < len(value):
            m = _GRANTEE.match(value, pos)
            if m is None or m.end() == pos:
                raise S3Error("InvalidArgument", f"Invalid grantee in {h}", ArgumentName=h)
            kind = {"id": "user", "uri": "group", "emailAddress": "email"}[m.group(1)]
            grants.append(Grant(kind, m.group(2).strip(), _GRANT_HEADERS[h]))
            pos = m.end()
    return grants


def _bits(permission: str, is_dir: bool) -> int:
    if permission == "FULL_CONTROL":
        return 7 if is_dir else 6
    if permission == "READ":
        return 5 if is_dir else 4
    if permission == "WRITE":
        return 3 if is_dir else 0
    return 0


def map_grants(
    grants: Iterable[Grant],
    owner_uid: int,
    gid: int,
    is_dir: bool,
    users: Any,
) -> Mapped:
    """
    The mode and public flags a grant list becomes (see the module docstring).

    @param users: the users database (C{by_uid}, C{all}): whose canonical id
        is whose, and who is in which group.
    @raise S3Error: NotImplemented (a grant the mode cannot express),
        UnresolvableGrantByEmailAddress, InvalidArgument (an unknown grantee).
    """
    owner_id = canonical_id(owner_uid)
    owner = group = other = 0
    public: set[str] = set()
    by_id = {canonical_id(u.uid): u for u in users.all()} if users is not None else {}
    for g in grants:
        if g.permission not in PERMISSIONS:
            raise S3Error("MalformedACLError", "The ACL you provided is not well formed")
        if g.kind == "email":
            raise S3Error(
                "UnresolvableGrantByEmailAddress",
                "The e-mail address you provided does not match any account on record",
            )
        if g.kind == "user" and g.id == owner_id:
            owner |= _bits(g.permission, is_dir)
            continue
        if g.permission in ("READ_ACP", "WRITE_ACP"):
            raise S3Error(
                "NotImplemented",
                "READ_ACP and WRITE_ACP can be granted only to the owner (permissions are "
                "the file's owner and mode)",
            )
        if g.kind == "group":
            if g.id not in (ALL_USERS, AUTH_USERS):
                raise S3Error(
                    "NotImplemented",
                    f"Grants to the group {g.id} are not implemented by this gateway",
                )
            other |= _bits(g.permission, is_dir)
            if g.id == ALL_USERS:
                public.add(g.permission)
            continue
        user = by_id.get(g.id)
        if user is None:
            raise S3Error(
                "InvalidArgument", "Invalid id", ArgumentName="CanonicalUser/ID", ArgumentValue=g.id
            )
        if gid != user.gid and gid not in tuple(user.groups):
            raise S3Error(
                "NotImplemented",
                f"A grant to {user.name} alone cannot be expressed in the file's mode: grant "
                f"to a group (gid {gid} is the file's) or to AuthenticatedUsers",
            )
        group |= _bits(g.permission, is_dir)
    if is_dir:
        other |= 1  # objects stay reachable where their own ACL opens them
    # POSIX applies the most specific class only: group members get what
    # everyone gets, or less would be granted to them than to strangers.
    group |= other
    return Mapped((owner << 6) | (group << 3) | other, frozenset(public))


def grants_of(
    mode: int, owner_uid: int, gid: int, is_dir: bool, public: Iterable[str], users: Any
) -> list[Grant]:
    """
    The ACL S3 shows for a file of this owner, group and mode (the reverse
    mapping): group grants first (as RGW and the SDKs' fixtures order them),
    then the owner's, then the members of the file's group.
    """
    out: list[Grant] = []

    def perms(bits: int) -> list[str]:
        full = 7 if is_dir else 6
        if bits & full == full:
            return ["FULL_CONTROL"]
        ps = []
        if bits & 4:
            ps.append("READ")
        if is_dir and bits & 2:
            ps.append("WRITE")
        return ps

    public = set(public)
    if public and mode & 4:
        # An AllUsers grant, as it was given (WRITE on an object means nothing
        # to S3 either, but is kept and shown).
        for p in ("READ", "WRITE", "FULL_CONTROL"):
            if p in public:
                out.append(Grant("group", ALL_USERS, p))
    else:
        for p in perms(mode & 7):
            out.append(Grant("group", AUTH_USERS, p))
    for p in perms((mode >> 6) & 7):
        out.append(Grant("user", canonical_id(owner_uid), p))
    # Group bits beyond what everyone has are grants to the group's members.
    group_perms = perms(((mode >> 3) & 7) & ~(mode & 7))
    if group_perms and users is not None:
        for u in users.all():
            if u.uid != owner_uid and (u.gid == gid or gid in tuple(u.groups)):
                for p in group_perms:
                    out.append(Grant("user", canonical_id(u.uid), p))
    return out


def render(owner_uid: int, owner_name: str, grants: list[Grant], users: Any) -> bytes:
    """An AccessControlPolicy document (with the xsi:type attributes S3 clients need)."""

    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    names = {canonical_id(u.uid): u.name for u in users.all()} if users is not None else {}
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
        f"<Owner><ID>{canonical_id(owner_uid)}</ID><DisplayName>{esc(owner_name)}</DisplayName></Owner>",
        "<AccessControlList>",
    ]
    for g in grants:
        if g.kind == "user":
            grantee = (
                '<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
                f"<ID>{esc(g.id)}</ID><DisplayName>{esc(names.get(g.id, g.id))}</DisplayName></Grantee>"
            )
        else:
            grantee = (
                '<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">'
                f"<URI>{esc(g.id)}</URI></Grantee>"
            )
        parts.append(f"<Grant>{grantee}<Permission>{g.permission}</Permission></Grant>")
    parts.append("</AccessControlList></AccessControlPolicy>")
    return "".join(parts).encode("utf-8")


def parse_policy_xml(el: Any, local: Any) -> tuple[str | None, list[Grant]]:
    """(owner id, grants) of a parsed AccessControlPolicy element."""
    owner_id = None
    grants = []
    for child in el:
        name = local(child.tag)
        if name == "Owner":
            for o in child:
                if local(o.tag) == "ID":
                    owner_id = (o.text or "").strip()
        elif name == "AccessControlList":
            for g in child:
                if local(g.tag) != "Grant":
                    continue
                kind = ident = perm = None
                for part in g:
                    pn = local(part.tag)
                    if pn == "Permission":
                        perm = (part.text or "").strip()
                    elif pn == "Grantee":
                        for f in part:
                            fn = local(f.tag)
                            if fn == "ID":
                                kind, ident = "user", (f.text or "").strip()
                            elif fn == "URI":
                                kind, ident = "group", (f.text or "").strip()
                            elif fn == "EmailAddress":
                                kind, ident = "email", (f.text or "").strip()
                if kind is None or ident is None or perm is None:
                    raise S3Error("MalformedACLError", "The ACL you provided is not well formed")
                grants.append(Grant(kind, ident, perm))
    return owner_id, grants


def encode_public(public: Iterable[str]) -> bytes | None:
    p = sorted(set(public))
    return json.dumps({"public": p}).encode() if p else None


def decode_public(raw: bytes | None) -> frozenset[str]:
    if not raw:
        return frozenset()
    try:
        return frozenset(json.loads(raw).get("public") or ())
    except (ValueError, AttributeError, TypeError):
        return frozenset()
