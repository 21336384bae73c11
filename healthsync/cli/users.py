"""``healthsync users add|passwd|role|remove|list``: the app's users and their roles.

Passwords are generated and printed once unless ``--password-stdin`` gives
one; only bcrypt hashes are stored, in ``HEALTHSYNC_HOME/credentials.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys

ROLE_HELP = (
    "admin (everything), analyst (launch, cancel, compare), viewer (read-only) or steward "
    "(a hospital's data steward: read-only, plus their own hospital; needs --federation and "
    "--hospital)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    users = subparsers.add_parser(
        "users",
        help="manage who may log in to the app, and their roles",
        description="Manage the app's users. The credentials file lives in HEALTHSYNC_HOME "
        "(default .healthsync/ in the checkout); it is created with one admin on first use.",
    )
    sub = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)

    add = sub.add_parser("add", help="add a user; prints the generated password once")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, help=ROLE_HELP)
    add.add_argument("--federation", metavar="DIR", help="a steward's data set directory")
    add.add_argument("--hospital", metavar="HOSPITAL_ID", help="a steward's hospital")
    _password_stdin(add)
    add.set_defaults(func=cmd_add)

    passwd = sub.add_parser("passwd", help="reset a user's password; ends their sessions")
    passwd.add_argument("name", metavar="NAME")
    _password_stdin(passwd)
    passwd.set_defaults(func=cmd_passwd)

    role = sub.add_parser("role", help="change a user's role")
    role.add_argument("name", metavar="NAME")
    role.add_argument("role", metavar="ROLE", help=ROLE_HELP)
    role.set_defaults(func=cmd_role)

    remove = sub.add_parser("remove", help="remove a user (never the last admin)")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=cmd_remove)

    listing = sub.add_parser("list", help="every user and their role")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(func=cmd_list)

    for parser in (add, passwd, role, remove, listing):
        parser.add_argument(
            "--home", default=None, help="credentials directory (default: $HEALTHSYNC_HOME)"
        )


def _password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of generating one",
    )


def _store(args: argparse.Namespace):
    """The credentials file, created (and its admin password printed) on first use."""
    from healthsync.auth import UserStore, resolve_home

    store = UserStore(resolve_home(args.home))
    admin_password = store.ensure()
    if admin_password is not None:
        print(f"created {store.path} with user 'admin', password: {admin_password}")
    return store


def _password(args: argparse.Namespace) -> str | None:
    if not args.password_stdin:
        return None
    return sys.stdin.readline().rstrip("\r\n")


def cmd_add(args: argparse.Namespace) -> int:
    from healthsync.auth.users import check_role

    check_role(args.role)  # before the credentials file is created: a typo leaves nothing
    store = _store(args)
    password = store.add(
        args.name,
        args.role,
        _password(args),
        federation=args.federation,
        hospital=args.hospital,
    )
    shown = "" if args.password_stdin else f", password: {password}"
    bound = f" of hospital {args.hospital}" if args.hospital else ""
    print(f"added {args.name} ({args.role}{bound}){shown}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    store = _store(args)
    password = store.set_password(args.name, _password(args))
    shown = "" if args.password_stdin else f": {password}"
    print(f"new password for {args.name}{shown}")
    return 0


def cmd_role(args: argparse.Namespace) -> int:
    from healthsync.auth.users import check_role

    check_role(args.role)
    _store(args).set_role(args.name, args.role)
    print(f"{args.name} is now {args.role}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _store(args).remove(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    users = _store(args).users()
    if args.json:
        print(json.dumps([_listed(u) for u in users]))
        return 0
    width = max(len(u.name) for u in users)
    for user in users:
        bound = f"  {user.hospital} of {user.federation}" if user.hospital else ""
        print(f"{user.name:<{width}}  {user.role}{bound}")
    return 0


def _listed(user) -> dict:
    entry = {"name": user.name, "role": user.role}
    if user.hospital:
        entry |= {"federation": user.federation, "hospital": user.hospital}
    return entry
