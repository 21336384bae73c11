"""``healthsync hospitals withdraw|rejoin|policy|status``: a hospital's say over its own data.

Changes are made by an authenticated user (``--user``, password on standard
input or in ``HEALTHSYNC_PASSWORD``, as for ``healthsync cohort``): an admin, or
the steward of that very hospital. Everything is recorded in the hospital's own
site folder (``hospitals/<id>/site/``); see docs/tenancy.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from healthsync.errors import HealthSyncError

EPILOG = """\
examples:
  healthsync hospitals withdraw H003 --data data/demo --user steward3 --password-stdin \\
      --reason "ethics board review" < steward3-password.txt
  healthsync hospitals policy H003 --data data/demo --user steward3 --min-cell 20 \\
      --epsilon-per-query 0.25
  healthsync hospitals status H003 --data data/demo --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    hospitals = subparsers.add_parser(
        "hospitals",
        help="a hospital's consent and privacy policy (its steward or an admin)",
        description="Withdraw a hospital from the consortium's training and cohort queries, "
        "let it rejoin, or tighten its privacy policy. Recorded in the hospital's own folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = hospitals.add_subparsers(dest="hospitals_command", metavar="COMMAND", required=True)
    withdraw = sub.add_parser("withdraw", help="stop the hospital taking part (recorded)")
    rejoin = sub.add_parser("rejoin", help="let a withdrawn hospital take part again (recorded)")
    policy = sub.add_parser(
        "policy", help="change the hospital's minimum cell size and epsilon limits (recorded)"
    )
    status = sub.add_parser("status", help="the hospital's consent, policy and their history")
    for parser in (withdraw, rejoin, policy, status):
        parser.add_argument("hospital", metavar="HOSPITAL_ID")
        parser.add_argument("--data", required=True, type=Path, help="federation directory")
    for parser in (withdraw, rejoin, policy):
        parser.add_argument("--user", required=True, help="who makes the change (admin or steward)")
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
        parser.add_argument(
            "--home", default=None, help="credentials directory (default: $HEALTHSYNC_HOME)"
        )
        parser.add_argument("--reason", default="", help="why, recorded with the change")
    policy.add_argument("--min-cell", type=int, help="smallest count shown (at least 11)")
    policy.add_argument("--epsilon-per-query", type=float, help="epsilon of one new query")
    policy.add_argument(
        "--epsilon-total", type=float, help="epsilon each analyst may spend on this hospital"
    )
    policy.add_argument(
        "--force", action="store_true", help="admins only: loosen a setting (needs --reason)"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    withdraw.set_defaults(func=cmd_consent, action="withdraw")
    rejoin.set_defaults(func=cmd_consent, action="rejoin")
    policy.set_defaults(func=cmd_policy)
    status.set_defaults(func=cmd_status)


def _folder(data: Path, hospital: str) -> Path:
    """The hospital's own folder, refusing an id the manifest does not list."""
    from healthsync.data import load_federation
    from healthsync.data.accessor import hospital_folder

    federation = load_federation(data)
    if hospital not in federation.hospital_ids:
        raise HealthSyncError(f"{data}: no hospital {hospital!r} in this federation")
    return hospital_folder(data, hospital)


def _governor(args: argparse.Namespace):
    """The authenticated user, if they may govern this hospital (admin or its steward)."""
    from healthsync import auth
    from healthsync.cli.credentials import authenticate, read_password

    authenticate(args.user, read_password(args.password_stdin), args.home)
    user = auth.UserStore(auth.resolve_home(args.home)).get(args.user)
    if user is None or not (user.role == "admin" or user.stewards(args.data, args.hospital)):
        role = user.role if user else "unknown user"
        raise HealthSyncError(
            f"{args.user} ({role}) may not govern hospital {args.hospital}: only an admin or "
            "that hospital's steward may"
        )
    return user


def cmd_consent(args: argparse.Namespace) -> int:
    from healthsync.privacy import consent
    from healthsync.privacy.site import SITE_DIR

    folder = _folder(args.data, args.hospital)
    user = _governor(args)
    change = consent.record(
        folder / SITE_DIR, args.action, f"{user.name} ({user.role})", args.reason
    )
    print(change.describe(args.hospital))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from healthsync.privacy.site import change_policy

    folder = _folder(args.data, args.hospital)
    user = _governor(args)
    if args.force and user.role != "admin":
        raise HealthSyncError("--force is for admins only")
    change = change_policy(
        folder,
        by=user.name,
        role=user.role,
        settings={
            "min_cell": args.min_cell,
            "epsilon_per_query": args.epsilon_per_query,
            "epsilon_total": args.epsilon_total,
        },
        force=args.force,
        reason=args.reason,
    )
    after = ", ".join(f"{k} {v:g}" for k, v in change.after.items())
    loosened = (
        f" (loosened {', '.join(change.loosened)}: {change.reason})" if change.loosened else ""
    )
    print(f"hospital {args.hospital} policy: {after}{loosened}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from healthsync.privacy import consent
    from healthsync.privacy.site import SITE_DIR, SitePolicy, policy_history

    folder = _folder(args.data, args.hospital)
    site_dir = folder / SITE_DIR
    withdrawn = consent.withdrawal(site_dir)
    policy = SitePolicy.read(site_dir / "policy.yaml")
    document = {
        "hospital": args.hospital,
        "taking_part": withdrawn is None,
        "consent_history": [asdict(c) for c in consent.history(site_dir)],
        "policy": {
            "min_cell": policy.threshold,
            "epsilon_per_query": policy.epsilon_per_query,
            "epsilon_total": policy.budget,
        },
        "policy_history": policy_history(folder),
    }
    if args.json:
        print(json.dumps(document))
        return 0
    print(
        withdrawn.describe(args.hospital) if withdrawn else f"hospital {args.hospital} takes part"
    )
    print("policy: " + ", ".join(f"{k} {v:g}" for k, v in document["policy"].items()))
    return 0
