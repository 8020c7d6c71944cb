"""ACLs and the authorizer: who may do what to which topic, group or the cluster (pure).

An ACL binding is Kafka's: (resource type, resource name, pattern type, principal, host,
operation, permission). ``Authorizer`` answers "may this principal, from this host, do
this operation on this resource?" over one immutable set of bindings, with the semantics
of Kafka's ``StandardAuthorizer`` (KIP-11, KIP-290 prefixed patterns):

1. **Off means open.** An authorizer that is not ``enabled`` allows everything.
2. **Super-users bypass everything** (Kafka's ``super.users``).
3. **Deny by default.** With no binding that allows it, an operation is denied (Kafka's
   ``allow.everyone.if.no.acl.found=false``).
4. **DENY beats ALLOW.** A matching DENY binding refuses, whatever allows.
5. **Matching.** A binding matches a resource when its type is the resource's and its
   name is the resource's (LITERAL), is ``*`` (LITERAL wildcard), or is a prefix of it
   (PREFIXED); a principal when it is the principal or ``User:*``; a host when it is
   the client's address or ``*``; an operation when it is the operation or ALL.
6. **Implied operations** (allow only, as Kafka): DESCRIBE is allowed by an ALLOW for
   READ, WRITE, DELETE or ALTER; DESCRIBE_CONFIGS by one for ALTER_CONFIGS. A DENY
   denies only the operation it names (or ALL).

Filters (``AclFilter``) select bindings for DescribeAcls and DeleteAcls with Kafka's
``AclBindingFilter`` semantics (ANY fields, and the MATCH pattern type).

Never: I/O, clocks, Ray, asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from ray_stream.core.types import wire
from ray_stream.errors import InvalidRequest, RayStreamError

__all__ = [
    "CLUSTER_NAME",
    "WILDCARD",
    "WILDCARD_PRINCIPAL",
    "AclBinding",
    "AclFilter",
    "AclOutcome",
    "AclSnapshot",
    "Authorizer",
    "Operation",
    "PatternType",
    "Permission",
    "ResourceType",
    "check_binding",
    "check_filter",
]

CLUSTER_NAME = "kafka-cluster"  # the one CLUSTER resource's name, as in Kafka
WILDCARD = "*"  # a LITERAL resource name (or host) that matches every one
WILDCARD_PRINCIPAL = "User:*"


class ResourceType(IntEnum):
    """Kafka's ``ResourceType`` codes (only TOPIC, GROUP and CLUSTER are authorized)."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    """Kafka's ``PatternType`` codes; bindings are LITERAL or PREFIXED."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """Kafka's ``AclOperation`` codes."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    """Kafka's ``AclPermissionType`` codes."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


SERVED_RESOURCES = frozenset({ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER})

# Kafka's supported operations per resource type (the authorized-operations bit fields).
SUPPORTED_OPERATIONS: dict[ResourceType, tuple[Operation, ...]] = {
    ResourceType.TOPIC: (
        Operation.READ,
        Operation.WRITE,
        Operation.CREATE,
        Operation.DELETE,
        Operation.ALTER,
        Operation.DESCRIBE,
        Operation.DESCRIBE_CONFIGS,
        Operation.ALTER_CONFIGS,
    ),
    ResourceType.GROUP: (Operation.READ, Operation.DESCRIBE, Operation.DELETE),
    ResourceType.CLUSTER: (
        Operation.CREATE,
        Operation.CLUSTER_ACTION,
        Operation.DESCRIBE_CONFIGS,
        Operation.ALTER_CONFIGS,
        Operation.IDEMPOTENT_WRITE,
        Operation.ALTER,
        Operation.DESCRIBE,
    ),
}

# Rule 6: an ALLOW for any of these allows the key operation too.
_IMPLIED_BY: dict[Operation, frozenset[Operation]] = {
    Operation.DESCRIBE: frozenset(
        {Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER}
    ),
    Operation.DESCRIBE_CONFIGS: frozenset({Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS}),
}


@wire
@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One ACL: ``permission`` for ``principal`` from ``host`` to do ``operation`` on the
    resources of ``resource_type`` that ``pattern_type`` + ``resource_name`` match.

    Plain ints in the Kafka codes (the enums above compare equal to them); validated
    where bindings enter (``check_binding``), not here, so a stored binding always loads.
    """

    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int

    def describe(self) -> str:
        """kafka-acls style: ``User:alice has Allow permission for operations: Write
        from hosts: * on TOPIC orders (LITERAL)``."""
        return (
            f"{self.principal} has {_name(Permission, self.permission).title()} permission "
            f"for operations: {_name(Operation, self.operation).title()} from hosts: "
            f"{self.host} on {_name(ResourceType, self.resource_type)} {self.resource_name} "
            f"({_name(PatternType, self.pattern_type)})"
        )


@wire
@dataclass(frozen=True, slots=True)
class AclFilter:
    """Selects bindings (DescribeAcls, DeleteAcls): ANY (or None for the strings)
    matches every value; pattern type MATCH selects the bindings that would apply to
    the named resource (LITERAL equal or ``*``, PREFIXED a prefix of it)."""

    resource_type: int = ResourceType.ANY
    resource_name: str | None = None
    pattern_type: int = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: int = Operation.ANY
    permission: int = Permission.ANY

    def matches(self, binding: AclBinding) -> bool:
        """Kafka's ``AclBindingFilter.matches``."""
        return self._resource_matches(binding) and (
            (self.principal is None or self.principal == binding.principal)
            and (self.host is None or self.host == binding.host)
            and self.operation in (Operation.ANY, binding.operation)
            and self.permission in (Permission.ANY, binding.permission)
        )

    def _resource_matches(self, binding: AclBinding) -> bool:
        if self.resource_type not in (ResourceType.ANY, binding.resource_type):
            return False
        if self.pattern_type not in (PatternType.ANY, PatternType.MATCH, binding.pattern_type):
            return False
        name = self.resource_name
        if name is None:
            return True
        if self.pattern_type != PatternType.MATCH:
            return name == binding.resource_name
        if binding.pattern_type == PatternType.PREFIXED:
            return name.startswith(binding.resource_name)
        return binding.resource_name in (name, WILDCARD)


@wire
@dataclass(frozen=True, slots=True)
class AclSnapshot:
    """Every binding at one version of the metadata's ACLs (versions only compare
    equal); ``bindings`` is None in a watch answer whose version did not change."""

    version: int
    bindings: tuple[AclBinding, ...] | None = None


@wire
@dataclass(frozen=True, slots=True)
class AclOutcome:
    """One item of a bulk ACL call: the binding created, or the bindings a filter
    matched and deleted; or the ray_stream error that refused it."""

    bindings: tuple[AclBinding, ...] = ()
    error: RayStreamError | None = None


def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _check_principal(principal: object, field: str) -> None:
    if not isinstance(principal, str) or ":" not in principal or principal.startswith(":"):
        raise InvalidRequest(
            f"{field} {principal!r} is not a principal: use Kafka's <type>:<name> "
            f"form, e.g. User:alice (or {WILDCARD_PRINCIPAL} for every user)"
        )


def _check_code(enum: type[IntEnum], value: object, field: str, allowed: Iterable[int]) -> None:
    names = sorted(enum(v).name for v in allowed)
    if isinstance(value, bool) or not isinstance(value, int) or value not in set(allowed):
        raise InvalidRequest(f"{field} {value!r} is not one of {names}")


def check_binding(binding: AclBinding) -> AclBinding:
    """Refuse a binding that cannot be stored (Kafka's CreateAcls checks).

    Returns:
        The binding with plain ints for its codes (as stored and journaled).

    Raises:
        InvalidRequest: the message names the field.
    """
    _check_code(ResourceType, binding.resource_type, "resource_type", SERVED_RESOURCES)
    _check_code(
        PatternType,
        binding.pattern_type,
        "pattern_type",
        (PatternType.LITERAL, PatternType.PREFIXED),
    )
    concrete_ops = [op for op in Operation if op not in (Operation.UNKNOWN, Operation.ANY)]
    _check_code(Operation, binding.operation, "operation", concrete_ops)
    _check_code(Permission, binding.permission, "permission", (Permission.ALLOW, Permission.DENY))
    _check_principal(binding.principal, "principal")
    name = binding.resource_name
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"resource_name {name!r} must be a non-empty string")
    if binding.pattern_type == PatternType.PREFIXED and name == WILDCARD:
        raise InvalidRequest("resource_name '*' is a wildcard: use the LITERAL pattern type")
    if binding.resource_type == ResourceType.CLUSTER and name != CLUSTER_NAME:
        raise InvalidRequest(f"a CLUSTER resource is named {CLUSTER_NAME!r}, not {name!r}")
    if not isinstance(binding.host, str) or not binding.host:
        raise InvalidRequest(f"host {binding.host!r} must be an address or '*'")
    return AclBinding(
        int(binding.resource_type),
        name,
        int(binding.pattern_type),
        binding.principal,
        binding.host,
        int(binding.operation),
        int(binding.permission),
    )


def check_filter(acl_filter: AclFilter) -> None:
    """Refuse a filter with UNKNOWN codes (Kafka answers those INVALID_REQUEST).

    Raises:
        InvalidRequest: the message names the field.
    """
    _check_code(ResourceType, acl_filter.resource_type, "resource_type", range(1, 8))
    _check_code(PatternType, acl_filter.pattern_type, "pattern_type", range(1, 5))
    _check_code(Operation, acl_filter.operation, "operation", range(1, 15))
    _check_code(Permission, acl_filter.permission, "permission", range(1, 4))
    for field in ("resource_name", "principal", "host"):
        value = getattr(acl_filter, field)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{field} {value!r} must be a string or None (any)")


class Authorizer:
    """Authorization decisions over one set of bindings (see the module doc).

    Args:
        bindings: the ACLs.
        enabled: False: every check passes (rule 1).
        super_users: principals every check lets through (rule 2).
    """

    def __init__(
        self,
        bindings: Iterable[AclBinding] = (),
        *,
        enabled: bool = True,
        super_users: Iterable[str] = (),
    ) -> None:
        self.enabled = enabled
        self.super_users = frozenset(super_users)
        self.bindings = tuple(bindings)
        # (resource type, pattern type) -> resource name -> bindings
        self._index: dict[tuple[int, int], dict[str, list[AclBinding]]] = {}
        for b in self.bindings:
            by_name = self._index.setdefault((b.resource_type, b.pattern_type), {})
            by_name.setdefault(b.resource_name, []).append(b)

    def authorize(
        self, principal: str, host: str, operation: int, resource_type: int, name: str
    ) -> bool:
        """May ``principal`` from ``host`` ("/1.2.3.4" or "1.2.3.4") do ``operation``
        on the resource ``resource_type``/``name``?"""
        if not self.enabled or principal in self.super_users:
            return True
        found = self._matching(principal, _address(host), resource_type, name)
        if any(_denies(b, operation) for b in found):
            return False
        return any(_allows(b, operation) for b in found)

    def authorize_any(self, principal: str, host: str, operation: int, resource_type: int) -> bool:
        """May ``principal`` do ``operation`` on *some* resource of ``resource_type``?

        Kafka's ``authorizeByResourceType`` (used for InitProducerId: WRITE on any
        topic): an ALLOW binding counts unless a DENY covers everything it names (a DENY
        on ``*``, on the same literal name, or on a prefix of its name).
        """
        if not self.enabled or principal in self.super_users:
            return True
        address = _address(host)
        relevant = [
            b
            for b in self.bindings
            if b.resource_type == resource_type
            and _who_matches(b, principal, address)
            and b.operation in (operation, Operation.ALL)
        ]
        denied = [b for b in relevant if b.permission == Permission.DENY]
        if any(
            b.pattern_type == PatternType.LITERAL and b.resource_name == WILDCARD for b in denied
        ):
            return False
        denied_prefixes = [
            b.resource_name for b in denied if b.pattern_type == PatternType.PREFIXED
        ]
        denied_names = {b.resource_name for b in denied if b.pattern_type == PatternType.LITERAL}
        for b in relevant:
            if b.permission != Permission.ALLOW:
                continue
            if any(b.resource_name.startswith(p) for p in denied_prefixes):
                continue
            if b.pattern_type == PatternType.LITERAL and b.resource_name in denied_names:
                continue
            return True
        return False

    def authorized_operations(
        self, principal: str, host: str, resource_type: int, name: str
    ) -> int:
        """Kafka's authorized-operations bit field (bit ``op`` set when allowed) over the
        operations Kafka supports for ``resource_type``."""
        bits = 0
        for op in SUPPORTED_OPERATIONS.get(ResourceType(resource_type), ()):
            if self.authorize(principal, host, op, resource_type, name):
                bits |= 1 << op
        return bits

    def _matching(
        self, principal: str, address: str, resource_type: int, name: str
    ) -> list[AclBinding]:
        literal = self._index.get((resource_type, PatternType.LITERAL), {})
        candidates = [
            *literal.get(name, ()),
            *(literal.get(WILDCARD, ()) if name != WILDCARD else ()),
        ]
        prefixed = self._index.get((resource_type, PatternType.PREFIXED))
        if prefixed:
            for end in range(1, len(name) + 1):
                candidates.extend(prefixed.get(name[:end], ()))
        return [b for b in candidates if _who_matches(b, principal, address)]


def _address(host: str) -> str:
    """Kafka prints a client's address as "/1.2.3.4"; bindings hold "1.2.3.4"."""
    return host[1:] if host.startswith("/") else host


def _who_matches(binding: AclBinding, principal: str, address: str) -> bool:
    return binding.principal in (principal, WILDCARD_PRINCIPAL) and binding.host in (
        address,
        WILDCARD,
    )


def _denies(binding: AclBinding, operation: int) -> bool:
    return binding.permission == Permission.DENY and binding.operation in (
        operation,
        Operation.ALL,
    )


def _allows(binding: AclBinding, operation: int) -> bool:
    if binding.permission != Permission.ALLOW:
        return False
    if binding.operation == Operation.ALL:
        return True
    implied = _IMPLIED_BY.get(Operation(operation))
    return binding.operation == operation or (implied is not None and binding.operation in implied)
