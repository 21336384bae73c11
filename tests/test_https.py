"""The app over HTTPS, as ``python3 scripts/bootstrap.py app --https`` serves it.

One Streamlit server for the module, started with the TLS options the
bootstrap script computes (its ``tls_options``, which runs ``healthsync https``
in the venv). It answers ``/_stcore/health`` over HTTPS to a client trusting
only the local CA, serves nothing over plain HTTP on that port, and Chromium,
trusting only that certificate's key (its SPKI hash; not "ignore all
certificate errors"), logs in and gets a login cookie marked Secure.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.util
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from healthsync import auth
from tests.app_helpers import ROOT
from tests.test_browser import CHROMIUM, settle, wait_for_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _bootstrap():
    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "scripts" / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class HttpsServer:
    port: int
    home: Path
    ca: Path
    cert: Path
    log: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def health(self, url: str, **kwargs) -> bytes:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5, **kwargs) as reply:
            return reply.read()


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    root = tmp_path_factory.mktemp("https")
    home = root / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HEALTHSYNC_HOME": str(home), "HEALTHSYNC_DB": str(root / "m.duckdb")}
    bootstrap = _bootstrap()
    saved = os.environ.get("HEALTHSYNC_HOME")
    os.environ["HEALTHSYNC_HOME"] = str(home)  # tls_options runs `healthsync https` with it
    try:
        options = bootstrap.tls_options(None, None, port)
    finally:
        os.environ.pop("HEALTHSYNC_HOME") if saved is None else os.environ.update(
            HEALTHSYNC_HOME=saved
        )
    assert options[1] == str(home / "tls" / "server.pem")
    log = root / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                *[sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")],
                *["--server.headless", "true", "--server.port", str(port)],
                *["--browser.gatherUsageStats", "false", *options],
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = HttpsServer(port, home, home / "tls" / "ca.pem", home / "tls" / "server.pem", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if server.health(f"https://127.0.0.1:{port}", context=server.context()) == b"ok":
                    break
            except OSError:
                assert time.monotonic() < deadline, f"not healthy in 60 s:\n{log.read_text()}"
                time.sleep(0.3)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_health_answers_over_https_to_a_client_trusting_the_ca_and_not_over_http(https_server):
    for host in ("127.0.0.1", "localhost"):
        url = f"https://{host}:{https_server.port}"
        assert https_server.health(url, context=https_server.context()) == b"ok"
    # A client that trusts nothing but the system store refuses the certificate.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        https_server.health(f"https://127.0.0.1:{https_server.port}")
    # Plain HTTP on the same port gets no answer, let alone "ok".
    with pytest.raises((OSError, http.client.HTTPException)):
        https_server.health(f"http://127.0.0.1:{https_server.port}")


def _spki_hash(cert: Path) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the key."""
    public_key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_chromium_trusting_the_certificate_logs_in_over_https_with_a_secure_cookie(https_server):
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium")
    auth.UserStore(https_server.home).add("ana", "analyst", "analyst-password")
    url = f"https://localhost:{https_server.port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                *["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                f"--ignore-certificate-errors-spki-list={_spki_hash(https_server.cert)}",
            ],
        )
        try:
            page = browser.new_context().new_page()
            page.goto(url + "/")
            wait_for_text(page, "User name", timeout=60)
            settle(page)  # typing into a form whose first run is still going can be lost
            page.get_by_role("textbox", name="User name").fill("ana")
            page.get_by_role("textbox", name="Password").fill("analyst-password")
            page.get_by_role("button", name="Log in").click()
            wait_for_text(page, "Log out", timeout=90)  # the machine may be busy
            assert page.url.startswith("https://")
            name = auth.UserStore(https_server.home).cookie.name
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert name in cookies, f"no login cookie in {sorted(cookies)}"
            assert cookies[name]["secure"] is True
        finally:
            browser.close()
