# twistd plugins of claudefs-gateway. Thin on purpose: ServiceMaker imports each
# tap module only when its plugin is used, so `twistd --help` stays fast and a
# broken front end hides no other (STYLE.md §10). No __init__.py in this folder.
from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "ClaudeFS gateway",
    "claudefs_gateway.tap",
    "Every enabled protocol: NFS, S3, SMB.",
    "claudefs-gateway",
)
nfs = ServiceMaker(
    "ClaudeFS NFS",
    "claudefs_gateway.nfs.tap",
    "NFSv3 (+MOUNT, portmapper, NLM) and NFSv4.1/4.2 only.",
    "claudefs-nfs",
)
s3 = ServiceMaker("ClaudeFS S3", "claudefs_gateway.s3.tap", "The S3 API only.", "claudefs-s3")
smb = ServiceMaker(
    "ClaudeFS SMB", "claudefs_gateway.smb.tap", "SMB 2 and 3 (2.0.2 to 3.1.1) only.", "claudefs-smb"
)
meta = ServiceMaker(
    "ClaudeFS metadata server",
    "claudefs_gateway.servers.meta_tap",
    "The namespace over the ClaudeFS RPC (port 7001).",
    "claudefs-meta",
)
data = ServiceMaker(
    "ClaudeFS data server",
    "claudefs_gateway.servers.data_tap",
    "File bytes as chunk files over the ClaudeFS RPC (port 7002).",
    "claudefs-data",
)

# `twistd --reactor cfs-epoll` (and `trial --reactor cfs-epoll`): the reactor
# cfs-gateway runs on (claudefs_gateway/core/reactor.py). twistd's own default
# stays its choice.
cfs_epoll = Reactor(
    "cfs-epoll",
    "claudefs_gateway.core.reactor",
    "epoll(4) reactor without the legacy log context per event (claudefs-gateway).",
)
