"""The README's two commands: set up ``.venv`` in the checkout, then run the app or the tests.

    python3 scripts/bootstrap.py app    # install, make demo data, serve on :8501
    python3 scripts/bootstrap.py app --https [--port N] [--cert FILE --key FILE]
    python3 scripts/bootstrap.py test   # install (plus Chromium), run the suite

``--https`` serves the app over TLS: with a local certificate authority made on
first use in ``.healthsync/tls/`` (``healthsync https``, inside the venv, as the
``cryptography`` package is not installed yet when this starts), or with your
own ``--cert`` and ``--key``.

Only the standard library is used here, because this runs before anything is
installed. Installing is skipped when ``requirements.txt`` and ``pyproject.toml``
are unchanged since the last install (a stamp file in ``.venv`` records them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".healthsync-installed"
CHROMIUM = Path("/usr/bin/chromium")
DEMO_DATA = ROOT / "data" / "demo"


def _say(message: str) -> None:
    print(f"[healthsync] {message}", flush=True)


def _run(cmd: list[str], **kwargs) -> None:
    subprocess.run(cmd, check=True, **kwargs)


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create ``.venv`` and install the pinned requirements plus this project (editable)."""
    if sys.version_info[:2] != (3, 11):
        _say(f"warning: HealthSync is tested on Python 3.11, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        _say("creating virtual environment in .venv")
        _run([sys.executable, "-m", "venv", str(VENV)])
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    _say("installing requirements (first run takes a minute or two)")
    _run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "-r", "requirements.txt", "-e", "."],
        cwd=ROOT,
    )
    STAMP.write_text(_fingerprint())


def ensure_chromium() -> None:
    """Install Debian's Chromium for the browser tests (Playwright may not download browsers)."""
    if CHROMIUM.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit("error: /usr/bin/chromium is missing and apt-get is not available")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    _say("installing Debian's chromium for the browser tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run([*prefix, apt, "update", "-qq"], env=env)
    _run([*prefix, apt, "install", "-y", "-qq", "chromium"], env=env)


def run_app(argv: list[str]) -> int:
    """Generate the demo federation if missing, then serve the app (HTTP or HTTPS)."""
    parser = argparse.ArgumentParser(prog="python3 scripts/bootstrap.py app")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (8501)")
    parser.add_argument("--https", action="store_true", help="serve over TLS")
    parser.add_argument("--cert", help="with --https: your certificate (PEM) instead of ours")
    parser.add_argument("--key", help="with --https: the private key of --cert (PEM)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"port must be 1-65535, got {args.port}")
    if (args.cert or args.key) and not args.https:
        parser.error("--cert and --key need --https")
    ensure_venv()
    if not (DEMO_DATA / "federation.json").exists():
        _say("generating the demo federation in data/demo")
        _run(
            [str(PYTHON), "-m", "healthsync", "data", "generate", "--out", str(DEMO_DATA)], cwd=ROOT
        )
    home = Path(os.environ.get("HEALTHSYNC_HOME", ROOT / ".healthsync"))
    if not (home / "credentials.yaml").exists():
        _say("creating the app's users file; note the admin password printed below (shown once)")
        _run([str(PYTHON), "-m", "healthsync", "users", "list"], cwd=ROOT)
    started_engine = False
    if os.environ.get("HEALTHSYNC_ENGINE", "auto").lower() not in {"off", "0", "no", "false"}:
        _say("starting the training engine in the background (Flower and Ray kept warm)")
        started_engine = start_engine()
    cmd = [str(PYTHON), "-m", "streamlit", "run", "app.py", "--server.port", str(args.port)]
    scheme = "http"
    if args.https:
        cmd += tls_options(args.cert, args.key, args.port)
        scheme = "https"
    _say(f"starting the app on {scheme}://localhost:{args.port}")
    os.chdir(ROOT)
    if not started_engine:  # nothing of ours to stop afterwards: become the app
        os.execv(str(PYTHON), cmd)
    return serve_then_stop_engine(cmd)


def start_engine() -> bool:
    """``healthsync engine start --no-wait``; whether this call started it (not one running)."""
    done = subprocess.run(
        [str(PYTHON), "-m", "healthsync", "engine", "start", "--no-wait"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    print(done.stdout, end="", flush=True)
    return done.stdout.startswith("engine starting (pid ") and "already" not in done.stdout


def serve_then_stop_engine(cmd: list[str]) -> int:
    """Serve the app as a child; when it ends (Ctrl-C, SIGTERM, exit), stop the engine too.

    The engine this command started serves this app: left behind, it would idle
    on for 15 minutes with its Ray workers after the app is gone.
    """
    import signal

    app = subprocess.Popen(cmd, cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda *_: app.terminate())
    try:
        while True:
            try:
                code = app.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reaches the app too; wait for it to finish
                continue
    finally:
        _say("stopping the training engine this command started")
        subprocess.run([str(PYTHON), "-m", "healthsync", "engine", "stop"], cwd=ROOT, check=False)
    return code


def tls_options(cert: str | None, key: str | None, port: int) -> list[str]:
    """Streamlit's TLS settings, from ``healthsync https`` (which makes or checks the files)."""
    cmd = [str(PYTHON), "-m", "healthsync", "https", "--json"]
    if cert or key:
        cmd += ["--cert", cert or "", "--key", key or ""]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(done.returncode)  # healthsync printed the one-line error
    files = json.loads(done.stdout)
    if files["ca"]:
        _say(f"check: curl --cacert {files['ca']} https://localhost:{port}/_stcore/health")
    return ["--server.sslCertFile", files["cert"], "--server.sslKeyFile", files["key"]]


def run_tests(extra: list[str]) -> int:
    """Run the whole pytest suite from the checkout."""
    ensure_venv()
    ensure_chromium()
    completed = subprocess.run([str(PYTHON), "-m", "pytest", *extra], cwd=ROOT)
    return completed.returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"app", "test"}:
        print(
            "usage: python3 scripts/bootstrap.py app [--https] [--port N] | test [pytest args...]",
            file=sys.stderr,
        )
        return 2
    if argv[0] == "app":
        return run_app(argv[1:])
    return run_tests(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
