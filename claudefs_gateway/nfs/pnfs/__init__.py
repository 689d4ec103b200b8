"""
pNFS with the flexible file layout (RFC 8881 ch. 12, RFC 8435): the gateway
as metadata server hands clients layouts naming the ClaudeFS data servers,
which serve the file bytes themselves over NFSv3 (docs/pnfs.rst).

 - L{handles}: the data-server file handles the metadata server mints and
   the data servers check (HMAC-fenced);
 - L{flexfiles}: the flexfiles layout, device address and return bodies on
   the wire;
 - L{mds}: layouts, devices, recalls, fencing and mirror repair of one gateway.
"""
