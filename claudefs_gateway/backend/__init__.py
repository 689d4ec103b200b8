"""
Backends: where the namespace is stored: embedded (SQLite and files), remote
(the ClaudeFS servers), PostgreSQL (the meta server's store), memory.

See DESIGN.md "The backend contract".

Front ends never import this package; L{claudefs_gateway.vfs} does.
"""
