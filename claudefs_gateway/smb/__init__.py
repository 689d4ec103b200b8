"""
The SMB2/3 front end: SMB 2.0.2 to 3.1.1 over direct TCP (port 445).

L{make_service} builds C{proto:smb}: one listener serving the configured
exports as shares, plus IPC$ with the srvsvc pipe. See docs/smb.rst.
"""

from __future__ import annotations

from claudefs_gateway.smb.service import make_service

BUILT = True
NOT_BUILT = ""

__all__ = ["BUILT", "NOT_BUILT", "make_service"]
