"""twistd's C{claudefs-data} (ServiceMaker loads Options and makeService from here)."""

from claudefs_gateway.servers.tap import DataOptions as Options
from claudefs_gateway.servers.tap import makeService

__all__ = ["Options", "makeService"]
