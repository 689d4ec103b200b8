# Endpoint-parser plugins of claudefs-gateway (as txtorcon's onion:): rdma: (server and
# client; RDMA when present, TCP otherwise) and mtls: (a TLS server that requires a
# client certificate signed by its CA). Thin: the classes live in claudefs_gateway.core.transport.
from claudefs_gateway.core.transport.rdma import RDMAClientParser, RDMAServerParser
from claudefs_gateway.core.transport.tls import MutualTLSServerParser

rdma_server = RDMAServerParser()
rdma_client = RDMAClientParser()
mtls_server = MutualTLSServerParser()
