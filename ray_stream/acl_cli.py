"""``ray-stream acls add|list|delete``: manage the ACLs, mirroring Kafka's ``kafka-acls``.

Examples::

    ray-stream acls add --allow-principal User:alice --operation Write --topic orders
    ray-stream acls add --allow-principal User:bob --operation Read --topic logs- \\
        --resource-pattern-type prefixed
    ray-stream acls add --deny-principal User:mallory --operation All --topic '*'
    ray-stream acls add --allow-principal User:app --operation Read --group app-consumers
    ray-stream acls list [--topic orders] [--principal User:alice]
    ray-stream acls delete --allow-principal User:alice --operation Write --topic orders

The ACLs go to the metadata actor through the Python API (``Cluster.create_acls`` and
friends), so they work whether or not the cluster enforces them (``--authorizer acl``).
Flags and names follow ``kafka-acls``: operations are Kafka's (Read, Write, Create,
Delete, Alter, Describe, ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite,
All), hosts default to ``*``, the pattern type to ``literal`` (``any`` for ``list``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ray_stream.core.acl import (
    CLUSTER_NAME,
    WILDCARD,
    AclBinding,
    AclFilter,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from ray_stream.errors import InvalidRequest

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add ``acls`` and its subcommands to the ``ray-stream`` parser."""
    acls = sub.add_parser("acls", help="add, list, delete ACLs (like kafka-acls)")
    asub = acls.add_subparsers(dest="acls_command", required=True)
    for name, text in (
        ("add", "add ACLs: principals x hosts x operations x resources"),
        ("delete", "delete the ACLs the flags select (unset flags match any)"),
    ):
        cmd = asub.add_parser(name, help=text)
        _resource_args(cmd, pattern_default="literal")
        cmd.add_argument("--allow-principal", action="append", default=[], metavar="User:NAME")
        cmd.add_argument("--deny-principal", action="append", default=[], metavar="User:NAME")
        cmd.add_argument("--allow-host", action="append", default=[], metavar="HOST")
        cmd.add_argument("--deny-host", action="append", default=[], metavar="HOST")
        cmd.add_argument(
            "--operation", action="append", default=[], help="Read, Write, Describe, All, ..."
        )
    listing = asub.add_parser("list", help="list ACLs (optionally of one resource/principal)")
    _resource_args(listing, pattern_default="any")
    listing.add_argument("--principal", help="only the ACLs of this principal")


def _resource_args(cmd: argparse.ArgumentParser, *, pattern_default: str) -> None:
    cmd.add_argument("--topic", action="append", default=[], help="topic name ('*': all)")
    cmd.add_argument("--group", action="append", default=[], help="consumer group ('*': all)")
    cmd.add_argument("--cluster", action="store_true", help="the cluster resource")
    cmd.add_argument(
        "--resource-pattern-type",
        default=pattern_default,
        choices=("literal", "prefixed", "any", "match"),
        help=f"how resource names match (default {pattern_default})",
    )


def run(cluster: Any, args: argparse.Namespace) -> int:
    """Carry out ``args.acls_command`` against ``cluster``; prints what it did."""
    if args.acls_command == "add":
        bindings = _bindings(args)
        cluster.create_acls(bindings)
        print(f"added {len(bindings)} ACL(s):")
        _print(bindings)
    elif args.acls_command == "list":
        found = []
        for acl_filter in _list_filters(args):
            found += [b for b in cluster.describe_acls(acl_filter) if b not in found]
        _print(found)
    else:
        deleted = cluster.delete_acls(_delete_filters(args))
        print(f"deleted {len(deleted)} ACL(s):")
        _print(deleted)
    return 0


def parse_operation(text: str) -> Operation:
    """``Write``, ``describe-configs``, ``DESCRIBE_CONFIGS`` -> ``Operation``.

    Raises:
        InvalidRequest: not a Kafka operation (the message lists them).
    """
    key = text.replace("-", "").replace("_", "").upper()
    for op in Operation:
        if op.name.replace("_", "") == key and op not in (Operation.UNKNOWN, Operation.ANY):
            return op
    names = [op.name.title().replace("_", "") for op in Operation if op > Operation.ANY]
    raise InvalidRequest(f"--operation {text!r} is not one of {names}")


def _resources(args: argparse.Namespace) -> list[tuple[ResourceType, str]]:
    found = [(ResourceType.TOPIC, t) for t in args.topic]
    found += [(ResourceType.GROUP, g) for g in args.group]
    if args.cluster:
        found.append((ResourceType.CLUSTER, CLUSTER_NAME))
    return found


def _pattern(args: argparse.Namespace) -> PatternType:
    return PatternType[args.resource_pattern_type.upper()]


def _who(args: argparse.Namespace) -> list[tuple[str, str, Permission]]:
    """(principal, host, permission) for every principal x its hosts."""
    who = []
    for principals, hosts, permission in (
        (args.allow_principal, args.allow_host, Permission.ALLOW),
        (args.deny_principal, args.deny_host, Permission.DENY),
    ):
        who += [(p, h, permission) for p in principals for h in hosts or [WILDCARD]]
    return who


def _bindings(args: argparse.Namespace) -> list[AclBinding]:
    resources, pattern = _resources(args), _pattern(args)
    if not resources:
        raise InvalidRequest("acls add needs a resource: --topic, --group or --cluster")
    if pattern not in (PatternType.LITERAL, PatternType.PREFIXED):
        raise InvalidRequest("acls add: --resource-pattern-type must be literal or prefixed")
    if not args.allow_principal and not args.deny_principal:
        raise InvalidRequest("acls add needs --allow-principal or --deny-principal")
    if not args.operation:
        raise InvalidRequest("acls add needs --operation (e.g. --operation Write)")
    ops = [parse_operation(o) for o in args.operation]
    return [
        AclBinding(rtype, name, pattern, principal, host, op, permission)
        for rtype, name in resources
        for principal, host, permission in _who(args)
        for op in ops
    ]


def _list_filters(args: argparse.Namespace) -> list[AclFilter]:
    resources: list[tuple[ResourceType, str | None]] = [*_resources(args)]
    resources = resources or [(ResourceType.ANY, None)]
    return [
        AclFilter(rtype, name, _pattern(args), principal=args.principal)
        for rtype, name in resources
    ]


def _delete_filters(args: argparse.Namespace) -> list[AclFilter]:
    resources = _resources(args)
    if not resources:
        raise InvalidRequest("acls delete needs a resource: --topic, --group or --cluster")
    ops = [parse_operation(o) for o in args.operation] or [Operation.ANY]
    who: list[tuple[str | None, str | None, Permission]] = list(_who(args))
    if not who:
        who = [(None, None, Permission.ANY)]
    return [
        AclFilter(
            rtype,
            name,
            _pattern(args),
            principal,
            None if host == WILDCARD and not (args.allow_host or args.deny_host) else host,
            op,
            permission,
        )
        for rtype, name in resources
        for principal, host, permission in who
        for op in ops
    ]


def _print(bindings: list[AclBinding]) -> None:
    by_resource: dict[tuple[int, str, int], list[AclBinding]] = {}
    for b in bindings:
        by_resource.setdefault((b.resource_type, b.resource_name, b.pattern_type), []).append(b)
    for (rtype, name, pattern), found in by_resource.items():
        print(
            f"Current ACLs for resource `ResourcePattern(resourceType={ResourceType(rtype).name}, "
            f"name={name}, patternType={PatternType(pattern).name})`:"
        )
        for b in found:
            print(
                f" \t(principal={b.principal}, host={b.host}, "
                f"operation={Operation(b.operation).name}, "
                f"permissionType={Permission(b.permission).name})"
            )
        print()
