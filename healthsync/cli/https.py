"""``healthsync https``: the certificate the app serves HTTPS with (``bootstrap.py app --https``)."""

from __future__ import annotations

import argparse
import json
import sys

from healthsync.errors import HealthSyncError


def register(subparsers: argparse._SubParsersAction) -> None:
    https = subparsers.add_parser(
        "https",
        help="create (once) the app's local CA and localhost certificate, or check your own",
        description="Without --cert/--key: create, on first use, a local certificate "
        "authority and a certificate for localhost and 127.0.0.1 in HEALTHSYNC_HOME/tls "
        "(keys 0600), and say which ca.pem to trust. With --cert and --key: check that "
        "the pair can be read and belongs together. Prints the files Streamlit is to use.",
    )
    https.add_argument("--home", help="credentials home (default: HEALTHSYNC_HOME or .healthsync)")
    https.add_argument("--cert", help="your own certificate (PEM), instead of the local CA's")
    https.add_argument("--key", help="the private key of --cert (PEM, unencrypted)")
    https.add_argument("--json", action="store_true", help="print the files as JSON")
    https.set_defaults(func=cmd_https)


def cmd_https(args: argparse.Namespace) -> int:
    from healthsync.auth.users import resolve_home
    from healthsync.transport import certs

    if bool(args.cert) != bool(args.key):
        raise HealthSyncError("--cert and --key go together")
    if args.cert:
        certs.check_pair(args.cert, args.key)
        files = {"cert": args.cert, "key": args.key, "ca": None, "new_ca": False}
    else:
        made = certs.ensure_certificates(resolve_home(args.home) / "tls")
        files = {"cert": str(made.cert), "key": str(made.key), "ca": str(made.ca)}
        files["new_ca"] = made.new_ca
    if args.json:
        print(json.dumps(files))
    elif files["ca"] is None:
        print(f"serving HTTPS with {files['cert']}")
    else:
        note = "created" if files["new_ca"] else "using"
        print(f"{note} the local certificate authority {files['ca']}")
    if files["new_ca"]:
        # Said once, when the CA is new: what to trust.
        print(f"trust {files['ca']} once, in your browser or system store", file=sys.stderr)
    return 0
