"""
The one namespace every front end calls: handles, identity and permission
checks, export rules, quotas and the cross-protocol lock table (L{locks}).
"""
