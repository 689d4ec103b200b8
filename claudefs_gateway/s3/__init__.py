"""
The S3 front end: the S3 REST API (SigV4/SigV2, multipart, versioning,
object lock, ACLs, policies, SSE) over the shared namespace.

Also tagging, lifecycle, CORS, POST uploads and checksums; see C{docs/s3.rst}.

Layers, as STYLE.md §1: codecs (L{signing}, L{chunked}, L{ranges}, L{xmlio},
L{keys}, L{checksums}) → HTTP (L{channel}: twisted.web with streaming request
bodies) → the request cycle (L{api}: authenticate, L{routing}, answer) →
operations (L{ops}: buckets and listing, objects and copies, multipart
uploads) over the file tree (L{tree}, L{listing}, L{multipart}) → the
service (L{service}).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

BUILT = True
NOT_BUILT = ""

__all__ = ["BUILT", "NOT_BUILT", "make_service"]


def make_service(core: Any) -> IService:
    """The C{proto:s3} service: listener, API and multipart expiry."""
    from claudefs_gateway.s3.service import S3Service

    return S3Service(core)
