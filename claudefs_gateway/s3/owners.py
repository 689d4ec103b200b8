# -*- test-case-name: tests.s3.test_owners -*-
"""
S3's view of the users database: canonical user ids.

S3 names an owner or grantee by a 64-hex-digit canonical id; the gateway's
users are uids. The id of uid C{n} is the SHA-256 of C{claudefs-uid:n}: stable
across restarts and gateways, and revealing nothing but that two objects have
the same owner. Going back (a grant naming an id) looks the id up among the
users database's uids.
"""

from __future__ import annotations

import hashlib

__all__ = ["canonical_id"]


def canonical_id(uid: int) -> str:
    """The canonical user id S3 shows for C{uid}."""
    return hashlib.sha256(f"claudefs-uid:{uid}".encode()).hexdigest()
