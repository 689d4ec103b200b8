# Endpoint-parser plugins of claudefs-gateway (as txtorcon's onion:): rdma: (server and
# client; RDMA when present, TCP otherwise), mtls: (a TLS server that requires a
# client certificate signed by its CA) and reuseport: (TCP with SO_REUSEPORT, for --workers). Thin: the classes live in claudefs_gateway.core.transport.
from claudefs_gateway.core.transport.rdma import RDMAClientParser, RDMAServerParser
from claudefs_gateway.core.transport.reuseport import ReusePortParser
from claudefs_gateway.core.transport.tls import MutualTLSServerParser

rdma_server = RDMAServerParser()
rdma_client = RDMAClientParser()
mtls_server = MutualTLSServerParser()
reuseport_server = ReusePortParser()
