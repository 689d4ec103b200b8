"""
The ClaudeFS RPC (codec L{wire}, connections L{protocol}) and the remote
backend that runs the vfs over it (L{client}).
"""
