"""Tell, before a run starts, whether a Ray cluster's TLS setting and this process's agree.

Ray's TLS mode is all or nothing, and a mismatch does not fail: a driver
without ``RAY_USE_TLS`` (or with a certificate the cluster does not accept)
retries the connection forever, printing only "Failed to connect to GCS". So
``healthsync train --ray-address`` asks the cluster's GCS port first, with the
standard library's TLS client, the way Ray's gRPC would:

- the cluster answers a TLS handshake but this process has no ``RAY_USE_TLS``:
  refused, it needs the certificates;
- with ``RAY_USE_TLS=1``: the handshake verifies the cluster's certificate
  against ``RAY_TLS_CA_CERT`` and presents ``RAY_TLS_SERVER_CERT``; Ray's
  servers require and verify it (mutual TLS) and close the connection at once
  on a certificate they do not accept, else answer HTTP/2's opening frames.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping

from healthsync.errors import HealthSyncError

TLS_VARIABLES = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")
# HTTP/2's client preface and an empty SETTINGS frame: what a gRPC client sends first.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def tls_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether Ray in a process with ``env`` uses TLS (Ray reads ``RAY_USE_TLS`` the same way)."""
    env = os.environ if env is None else env
    return env.get("RAY_USE_TLS", "0").lower() in {"1", "true"}


def check_cluster_tls(
    host: str, port: int, *, env: Mapping[str, str] | None = None, timeout: float = 10.0
) -> None:
    """Raise ``HealthSyncError`` if a driver with ``env`` could not talk to the cluster's GCS."""
    env = os.environ if env is None else env
    where = f"{host}:{port}"
    if not tls_enabled(env):
        if _speaks_tls(host, port, timeout):
            raise HealthSyncError(
                f"the Ray cluster at {where} uses TLS: set RAY_USE_TLS=1 and "
                f"{', '.join(TLS_VARIABLES)} (healthsync cluster certs; see docs/cluster.md)"
            )
        return
    missing = [name for name in TLS_VARIABLES if not env.get(name)]
    if missing:
        raise HealthSyncError(f"RAY_USE_TLS=1 needs {', '.join(missing)} as well")
    context = ssl.create_default_context(cafile=env["RAY_TLS_CA_CERT"])
    context.check_hostname = False  # Ray's nodes are named by address; the chain is checked
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(env["RAY_TLS_SERVER_CERT"], env["RAY_TLS_SERVER_KEY"])
    except (OSError, ssl.SSLError) as err:
        raise HealthSyncError(f"cannot load RAY_TLS_SERVER_CERT and _KEY: {err}") from None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(H2_PREFACE)
            answer = tls.recv(9)
    except ssl.SSLCertVerificationError as err:
        raise HealthSyncError(
            f"the Ray cluster at {where} has a certificate RAY_TLS_CA_CERT did not sign "
            f"({err.verify_message})"
        ) from None
    except (ssl.SSLError, ConnectionError) as err:
        raise HealthSyncError(
            f"the Ray cluster at {where} does not speak TLS, or refused this process's "
            f"certificate ({err.__class__.__name__})"
        ) from None
    except TimeoutError:
        return  # a busy cluster: no verdict, Ray itself will try
    if not answer:
        raise HealthSyncError(
            f"the Ray cluster at {where} refused this process's certificate "
            "(RAY_TLS_SERVER_CERT is not signed by the cluster's CA)"
        )


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether the server completes a TLS handshake (no certificate checks: only the protocol)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (ssl.SSLError, OSError):
        return False
