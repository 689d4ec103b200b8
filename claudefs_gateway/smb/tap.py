"""C{twistd claudefs-smb}: only the smb front end (see L{claudefs_gateway.tap})."""

from claudefs_gateway.tap import SmbOptions as Options
from claudefs_gateway.tap import makeService

__all__ = ["Options", "makeService"]
