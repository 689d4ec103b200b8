"""
claudefs-gateway: one filesystem namespace served over NFS, S3 and SMB.

The package is layered (see docs/architecture.rst): protocol front ends call only
L{claudefs_gateway.vfs}, which calls only L{claudefs_gateway.backend}, which uses
L{claudefs_gateway.core}. Importing this package has no side effects.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
