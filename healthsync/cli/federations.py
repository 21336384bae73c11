"""``healthsync federations grant|revoke|list|pseudonymise``: who sees each data set, and how.

Like ``healthsync users``, an operator's command: grant and revoke edit
``access.yaml`` in ``HEALTHSYNC_HOME`` beside the credentials (see
``healthsync.auth.access`` and docs/tenancy.md). A data set without a list is
open to every analyst and viewer. ``pseudonymise`` turns the data set's
pseudonymous sites on or off (``healthsync.data.pseudonyms``): analysts and
viewers then see its hospitals as "Site A, Site B…". This command, run by the
operator who owns the data, always shows real names and ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    federations = subparsers.add_parser(
        "federations",
        help="grant or revoke an analyst's or viewer's access to a data set",
        description="Per-data-set access lists for analysts and viewers. Admins see every "
        "data set, a steward their own hospital's. A data set without a list is open to all; "
        "the first grant or revoke starts its list from everyone who could see it.",
    )
    sub = federations.add_subparsers(dest="federations_command", metavar="COMMAND", required=True)
    grant = sub.add_parser("grant", help="let USER see the data set at DIR")
    revoke = sub.add_parser("revoke", help="stop USER seeing the data set at DIR")
    listing = sub.add_parser("list", help="every data set's access list")
    pseudo = sub.add_parser(
        "pseudonymise",
        help="show the data set's hospitals to analysts and viewers as Site A, Site B…",
        description="Turn pseudonymous sites on or off for the data set at DIR. When on, "
        "analysts and viewers see every hospital as 'Site A', 'Site B'… (in hospital id "
        "order), never its name or id; admins see 'Name (Site C)'; stewards see their own "
        "hospital by name, as always.",
    )
    pseudo.add_argument("data", metavar="DIR", type=Path, help="federation directory")
    switch = pseudo.add_mutually_exclusive_group(required=True)
    switch.add_argument("--on", dest="on", action="store_true", help="hide names and ids")
    switch.add_argument("--off", dest="on", action="store_false", help="show real names")
    pseudo.set_defaults(func=cmd_pseudonymise)
    for parser in (grant, revoke):
        parser.add_argument("data", metavar="DIR", type=Path, help="federation directory")
        parser.add_argument("user", metavar="USER")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    for parser in (grant, revoke, listing):
        parser.add_argument(
            "--home", default=None, help="credentials directory (default: $HEALTHSYNC_HOME)"
        )
    grant.set_defaults(func=cmd_change, add=True)
    revoke.set_defaults(func=cmd_change, add=False)
    listing.set_defaults(func=cmd_list)


def cmd_change(args: argparse.Namespace) -> int:
    from healthsync import auth

    home = auth.resolve_home(args.home)
    access, users = auth.AccessLists(home), auth.UserStore(home)
    if args.add:
        access.grant(args.data, args.user, users)
        print(f"{args.user} may see {args.data}")
    else:
        access.revoke(args.data, args.user, users)
        print(f"{args.user} may no longer see {args.data}")
    return 0


def cmd_pseudonymise(args: argparse.Namespace) -> int:
    """Turn pseudonymous sites on or off; print what analysts and viewers now see."""
    from healthsync.data import pseudonyms

    federation = pseudonyms.set_pseudonymous(args.data, args.on, by="operator (CLI)")
    if not args.on:
        print(f"{args.data}: every role sees real hospital names again")
        return 0
    aliases = list(pseudonyms.pseudonyms(federation.hospital_ids).items())
    shown = ", ".join(f"{h} as {alias}" for h, alias in aliases[:3])
    more = f" and {len(aliases) - 3} more" if len(aliases) > 3 else ""
    print(f"{args.data}: analysts and viewers now see {shown}{more}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from healthsync import auth

    lists = auth.AccessLists(auth.resolve_home(args.home)).lists()
    if args.json:
        print(json.dumps(lists))
        return 0
    if not lists:
        print("no access lists: every data set is open to every analyst and viewer")
    for folder, names in lists.items():
        print(f"{folder}: {', '.join(names) or '(nobody but admins)'}")
    return 0
