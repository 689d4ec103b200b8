"""
Backends: where the namespace is stored (DESIGN.md "The backend contract").

Front ends never import this package; L{claudefs_gateway.vfs} does.
"""
