"""The local CA and server certificates (``healthsync.transport.certs``) and their two commands."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509

from healthsync.cli import main
from healthsync.errors import HealthSyncError
from healthsync.transport import TlsFiles, check_pair, ensure_certificates


def _names(path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def test_a_ca_and_a_localhost_certificate_are_made_once_and_reused(tmp_path):
    files = ensure_certificates(tmp_path / "tls")
    assert files.created and files.new_ca
    assert {"localhost", "127.0.0.1"} <= _names(files.cert)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (files.key, files.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700

    before = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    again = ensure_certificates(tmp_path / "tls")
    assert not again.created and not again.new_ca
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == before


def test_a_new_host_reissues_the_certificate_but_keeps_the_ca(tmp_path):
    first = ensure_certificates(tmp_path)
    ca = first.ca.read_bytes()
    second = ensure_certificates(tmp_path, ["node-2.example", "10.0.0.7"])
    assert second.created and not second.new_ca
    assert second.ca.read_bytes() == ca
    assert {"localhost", "127.0.0.1", "node-2.example", "10.0.0.7"} <= _names(second.cert)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path):
    files = ensure_certificates(tmp_path)
    check_pair(files.cert, files.key)
    with pytest.raises(HealthSyncError, match="does not belong to certificate"):
        check_pair(files.cert, files.ca_key)
    with pytest.raises(HealthSyncError, match="cannot read certificate"):
        check_pair(tmp_path / "missing.pem", files.key)


def test_https_command_makes_the_files_in_the_home_and_says_what_to_trust(tmp_path, capsys):
    assert main(["https", "--home", str(tmp_path / "home"), "--json"]) == 0
    out, err = capsys.readouterr()
    files = json.loads(out)
    assert files["ca"] == str(tmp_path / "home" / "tls" / "ca.pem") and files["new_ca"]
    assert f"trust {files['ca']}" in err
    assert main(["https", "--home", str(tmp_path / "home"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert not json.loads(out)["new_ca"] and "trust" not in err  # said once


def test_https_command_checks_a_user_supplied_pair(tmp_path, capsys):
    files = TlsFiles.in_directory(tmp_path)
    ensure_certificates(tmp_path)
    assert main(["https", "--cert", str(files.cert), "--key", str(files.ca_key)]) == 2
    assert capsys.readouterr().err.startswith("error: private key")
    assert main(["https", "--cert", str(files.cert)]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert main(["https", "--cert", str(files.cert), "--key", str(files.key), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cert"] == str(files.cert)


def test_cluster_certs_writes_what_rays_tls_mode_reads(tmp_path, capsys):
    assert (
        main(["cluster", "certs", str(tmp_path / "ray"), "--host", "head.example", "--json"]) == 0
    )
    env = json.loads(capsys.readouterr().out)
    assert env["RAY_USE_TLS"] == "1"
    assert env["RAY_TLS_CA_CERT"] == str(tmp_path / "ray" / "ca.pem")
    assert "head.example" in _names(tmp_path / "ray" / "server.pem")
    check_pair(env["RAY_TLS_SERVER_CERT"], env["RAY_TLS_SERVER_KEY"])
    assert stat.S_IMODE((tmp_path / "ray" / "server-key.pem").stat().st_mode) == 0o600


@contextlib.contextmanager
def _gcs_like_server(files: TlsFiles | None):
    """A server on 127.0.0.1 that, like Ray's gRPC: with ``files``, requires a client
    certificate from their CA and hangs up on others; answers a SETTINGS frame."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = None
    if files is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.cert, files.key)
        context.load_verify_locations(files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["h2"])

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                if context is None:
                    conn.recv(64)  # a plain gRPC server does not answer a TLS hello
                    continue
                with context.wrap_socket(conn, server_side=True) as tls:
                    if tls.recv(24):
                        tls.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_tls_mismatch_with_the_cluster_is_one_clear_error(tmp_path):
    from healthsync.transport.certs import ray_tls_env
    from healthsync.transport.ray_tls import check_cluster_tls

    cluster = ensure_certificates(tmp_path / "cluster")
    mine = ray_tls_env(cluster)
    stranger = ray_tls_env(ensure_certificates(tmp_path / "other"))
    with _gcs_like_server(cluster) as port:
        check_cluster_tls("127.0.0.1", port, env=mine)  # accepted: no error
        with pytest.raises(HealthSyncError, match="uses TLS: set RAY_USE_TLS=1"):
            check_cluster_tls("127.0.0.1", port, env={})
        with pytest.raises(HealthSyncError, match="refused this process's certificate"):
            check_cluster_tls(
                "127.0.0.1", port, env={**stranger, "RAY_TLS_CA_CERT": mine["RAY_TLS_CA_CERT"]}
            )
        with pytest.raises(HealthSyncError, match="RAY_TLS_CA_CERT did not sign"):
            check_cluster_tls("127.0.0.1", port, env=stranger)
        with pytest.raises(HealthSyncError, match="needs RAY_TLS_CA_CERT"):
            check_cluster_tls("127.0.0.1", port, env={**mine, "RAY_TLS_CA_CERT": ""})
    with _gcs_like_server(None) as port:
        check_cluster_tls("127.0.0.1", port, env={}, timeout=2)  # plain cluster, plain client
        with pytest.raises(HealthSyncError, match="does not speak TLS"):
            check_cluster_tls("127.0.0.1", port, env=mine, timeout=2)
