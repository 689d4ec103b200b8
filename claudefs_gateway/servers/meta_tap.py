"""twistd's C{claudefs-meta} (ServiceMaker loads Options and makeService from here)."""

from claudefs_gateway.servers.tap import MetaOptions as Options
from claudefs_gateway.servers.tap import makeService

__all__ = ["Options", "makeService"]
