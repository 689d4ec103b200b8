"""C{twistd claudefs-nfs}: only the nfs front end (see L{claudefs_gateway.tap})."""

from claudefs_gateway.tap import NfsOptions as Options
from claudefs_gateway.tap import makeService

__all__ = ["Options", "makeService"]
