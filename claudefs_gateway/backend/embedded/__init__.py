# -*- test-case-name: tests.backend.test_embedded -*-
"""
The embedded store: SQLite metadata and per-inode data files on one machine.

See docs/backend.rst for the on-disk layout, the durability and group-commit
design, and recovery.
"""

from claudefs_gateway.backend.embedded.backend import EmbeddedBackend

__all__ = ["EmbeddedBackend"]
