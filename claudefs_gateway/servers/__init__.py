"""
The ClaudeFS servers gateways talk to over the RPC (docs/servers.rst):
C{claudefs-meta} (the namespace, L{meta}) and C{claudefs-data} (file bytes as
chunk files, L{data}), each a twistd plugin and a C{cfs-gateway} verb.
"""
