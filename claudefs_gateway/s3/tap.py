"""C{twistd claudefs-s3}: only the s3 front end (see L{claudefs_gateway.tap})."""

from claudefs_gateway.tap import S3Options as Options
from claudefs_gateway.tap import makeService

__all__ = ["Options", "makeService"]
