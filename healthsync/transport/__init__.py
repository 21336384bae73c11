"""Encrypted transport: certificates for the app's HTTPS and for a Ray cluster's TLS mode.

``certs`` makes a small local certificate authority and a server certificate
signed by it (the ``cryptography`` package). The app serves HTTPS with them
(``scripts/bootstrap.py app --https``; Streamlit's own ``server.sslCertFile``
and ``server.sslKeyFile``), and Ray's TLS mode reads the same kind of files
from its ``RAY_TLS_*`` variables (``healthsync cluster certs DIR``, docs/cluster.md).
"""

from healthsync.transport.certs import TlsFiles, check_pair, ensure_certificates, ray_tls_env

__all__ = ["TlsFiles", "check_pair", "ensure_certificates", "ray_tls_env"]
