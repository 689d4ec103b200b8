"""
The NFS front end: NFSv3 with MOUNT, the portmapper and NLM/NSM, and
NFSv4.1/4.2 with pNFS flexfiles, over ONC RPC.

NFSv3, MOUNT, NLM and the portmapper over TCP and UDP; NFSv4.1 and 4.2
(L{claudefs_gateway.nfs.v4}) over TCP, with the pNFS metadata server
(L{claudefs_gateway.nfs.pnfs}) when C{nfs.pnfs.enabled}.

L{make_service} builds the C{proto:nfs} service (see
L{claudefs_gateway.nfs.service}); C{docs/nfs.rst} says what is served and how.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

BUILT = True
NOT_BUILT = ""

__all__ = ["BUILT", "NOT_BUILT", "make_service"]


def make_service(core: Any) -> IService:
    """The C{proto:nfs} MultiService for C{core} (listeners, programs, registration)."""
    from claudefs_gateway.nfs.service import NFSService

    return NFSService(core)
