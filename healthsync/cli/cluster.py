"""``healthsync cluster certs DIR``: the files Ray's TLS mode needs (see docs/cluster.md)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser(
        "cluster",
        help="TLS for a Ray cluster that runs take with --ray-address",
        description="Ray encrypts and authenticates its connections when every head, worker "
        "and driver process has RAY_USE_TLS=1 and the RAY_TLS_* variables set. See "
        "docs/cluster.md for the steps.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    certs = sub.add_parser(
        "certs",
        help="write a CA, a certificate and its key for Ray's TLS mode into DIR",
        description="Write ca.pem, server.pem and server-key.pem (0600) into DIR, creating "
        "only what is missing: an existing CA is kept, the certificate is reissued if it "
        "lacks a --host. Copy DIR to every machine of the cluster and to the one that runs "
        "`healthsync train`, then export the variables this prints.",
    )
    certs.add_argument("dir", metavar="DIR", help="directory for the files (created 0700)")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or address the cluster's nodes use (repeatable); localhost, "
        "127.0.0.1 and this machine's name and address are always included",
    )
    certs.add_argument("--json", action="store_true", help="print the variables as JSON")
    certs.set_defaults(func=cmd_certs)


def cmd_certs(args: argparse.Namespace) -> int:
    from healthsync.transport import certs

    files = certs.ensure_certificates(args.dir, [*certs.machine_hosts(), *args.host])
    env = certs.ray_tls_env(files)
    if args.json:
        print(json.dumps({**env, "created": files.created}))
        return 0
    print(f"{'wrote' if files.created else 'kept'} {files.ca}, {files.cert}, {files.key}")
    print("set these in every Ray head, worker and `healthsync train --ray-address` shell:")
    for name, value in env.items():
        print(f"export {name}={value}")
    return 0
