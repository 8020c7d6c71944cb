"""``ray-stream users add|list|delete NAME``: the SASL users of the Kafka listeners.

Examples::

    echo "$ALICE_PASSWORD" | ray-stream users add alice
    ray-stream users list
    ray-stream users delete alice

``add`` reads the password from stdin (its first line; from a terminal, without echo),
derives SCRAM-SHA-256 and SCRAM-SHA-512 credentials in this process (``Cluster.add_user``)
and stores only their salts and keys in the metadata; PLAIN logins check against them
too. ``add`` on an existing user replaces its password. ``list`` shows names,
mechanisms and iterations, never a secret.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

from ray_stream.errors import InvalidRequest

__all__ = ["add_parser", "read_password", "run"]


def add_parser(sub: Any) -> None:
    """Add ``users`` and its subcommands to the ``ray-stream`` parser."""
    users = sub.add_parser("users", help="add, list, delete SASL users (SCRAM, PLAIN)")
    usub = users.add_subparsers(dest="users_command", required=True)
    add = usub.add_parser("add", help="create a user or replace its password (read from stdin)")
    add.add_argument("name")
    add.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="SCRAM iterations, 4096-16384 (default 8192): more slows guessing and logins",
    )
    usub.add_parser("list", help="list users and their mechanisms (no secrets)")
    delete = usub.add_parser("delete", help="delete a user (open connections stay logged in)")
    delete.add_argument("name")


def read_password(stream: Any = None) -> str:
    """The password: typed without echo on a terminal, else stdin's first line.

    Raises:
        InvalidRequest: it is empty.
    """
    stream = stream if stream is not None else sys.stdin
    if stream.isatty():
        password = getpass.getpass("password: ")
    else:
        password = stream.readline().rstrip("\r\n")
    if not password:
        raise InvalidRequest('no password: pipe it on stdin (echo "$PASSWORD" | ...)')
    return password


def run(cluster: Any, args: Any) -> None:
    """Run ``users <command>`` against ``cluster``."""
    if args.users_command == "add":
        options = {} if args.iterations is None else {"iterations": args.iterations}
        cluster.add_user(args.name, read_password(), **options)
        print(f"user {args.name}: SCRAM-SHA-256 and SCRAM-SHA-512 credentials stored")
    elif args.users_command == "list":
        by_user: dict[str, list[str]] = {}
        for info in cluster.list_users():
            by_user.setdefault(info.user, []).append(f"{info.mechanism}(i={info.iterations})")
        for user, mechanisms in sorted(by_user.items()):
            print(f"{user}\t{' '.join(mechanisms)}")
    elif args.users_command == "delete":
        cluster.delete_user(args.name)
        print(f"deleted user {args.name}")
