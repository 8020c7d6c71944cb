"""Settings: plain, frozen, picklable values shipped to actors.

This module is the only reader of the environment (``RAY_STREAM_*``). Components (object
store, clock) are never stored here; actors build them from these values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ray_stream.errors import InvalidConfig

NAMESPACE = "ray_stream"
METADATA_ACTOR_NAME = "metadata"
FLEET_ACTOR_NAME = "fleet"
DEFAULT_DATA_DIR = ".ray_stream-data"


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # listen on every interface


DEFAULT_GROUP = "default"
ROLES = frozenset({"produce", "consume"})


def agent_name(index: int) -> str:
    return f"agent-{index}"


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A declared agent group: its agents (a total, or per node), listener and roles.

    Attributes:
        name: the group's name (``default`` is the group of ``--agents``).
        agents: how many agents the embedded cluster runs in the group.
        kafka_port: the group's first listener port (agent ``i`` of a node listens on
            ``kafka_port + i``); 0 disables the listener, -1 picks free ports.
        roles: what the group serves to Kafka clients: ``produce``, ``consume`` or both.
    """

    name: str
    agents: int = 1
    kafka_port: int = -1
    roles: frozenset[str] = ROLES

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise InvalidConfig(f"agent group name {self.name!r}: use letters, digits, - and _")
        if self.agents < 0:
            raise InvalidConfig(f"agent group {self.name!r}: agents must be >= 0")
        if not -1 <= self.kafka_port <= 65535:
            raise InvalidConfig(f"agent group {self.name!r}: kafka_port {self.kafka_port}")
        if not self.roles or not self.roles <= ROLES:
            raise InvalidConfig(
                f"agent group {self.name!r}: roles must be a non-empty subset of "
                f"{sorted(ROLES)}, got {sorted(self.roles)}"
            )


def parse_group(text: str) -> GroupSpec:
    """``name:key=value,...`` (keys ``agents``, ``port``, ``roles`` as ``produce+consume``).

    Raises:
        InvalidConfig: the text is malformed (the message names the part).
    """
    name, _, rest = text.partition(":")
    values: dict[str, object] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError(pair)
            if key == "agents":
                values["agents"] = int(value)
            elif key == "port":
                values["kafka_port"] = int(value)
            elif key == "roles":
                values["roles"] = frozenset(r for r in value.split("+") if r)
            else:
                raise ValueError(key)
        except ValueError as exc:
            raise InvalidConfig(
                f"agent group {text!r}: cannot read {pair!r} "
                "(expected name:agents=N,port=P,roles=produce+consume)"
            ) from exc
    return GroupSpec(name.strip(), **values)  # type: ignore[arg-type]


def unique_groups(groups: Sequence[GroupSpec]) -> tuple[GroupSpec, ...]:
    """Raises InvalidConfig when two groups share a name."""
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise InvalidConfig(f"agent groups must have distinct names, got {names}")
    return tuple(groups)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a cluster needs to start.

    Attributes:
        data_dir: local directory for the metadata SQLite file (and segments when the
            object store is the default local directory).
        object_store: ``file:///abs/path``, ``s3://bucket/prefix?endpoint_url=...`` or
            ``memory://``. Empty means ``<data_dir>/objects``.
        agents: number of agent actors.
        linger_ms: how long an agent buffers produced batches before one PUT. Longer
            means fewer PUTs per GiB (cost) and higher produce latency.
        flush_bytes: flush early once this many bytes are buffered. Bigger objects cost
            fewer PUTs but hold more memory per agent. When all flush slots are busy
            (the object store is the bottleneck) a flush takes everything buffered once
            a slot frees, so segments grow past this (bounded by agent_buffer_bytes).
        commit_group_wait_ms: when an agent's flushes queue up behind each other (it
            takes data faster than ``flush_bytes`` per PUT), a segment of at least half
            ``flush_bytes`` whose PUT is done waits up to this long for the next one's,
            and both are committed in one metadata round: one journal PUT for several
            segments, so fewer PUTs per GiB at the cost of up to this much more ack
            latency under load. A lightly loaded agent (small, linger-bound segments)
            never waits. -1 (default) means ``linger_ms``; 0 groups only segments that
            are ready together.
        max_record_bytes: the largest producer batch accepted (Kafka's
            ``message.max.bytes``, default 1 MiB + overhead).
        kafka_host / kafka_port: where agent 0 listens for the Kafka protocol; agent n
            listens on ``kafka_port + n``. ``kafka_port = 0`` disables the listener;
            ``-1`` picks free ports. ``kafka_host = 0.0.0.0`` listens on every interface
            (a ``ray up`` cluster whose clients run on other machines).
        kafka_advertised_host: the host agents name in Kafka Metadata answers, which
            clients then connect to. Empty: ``kafka_host``, or when that is a wildcard
            (``0.0.0.0``, ``::``) the IP of the Ray node each agent runs on, so clients
            reach every agent of a multi-node cluster.
        auto_create_topics: create unknown topics on first Kafka Metadata/Produce.
        default_partitions: partition count for auto-created topics.
        cache_bytes: per-agent segment cache size.
        namespace: the Ray namespace holding this cluster's named actors (``metadata``,
            ``fleet``, ``agent-<n>``); tests run several clusters side by side with
            distinct ones.

    The fleet (docs/design/0004-agent-fleet.md):

    Attributes:
        zones: simulated availability zones for a cluster whose Ray nodes name none:
            agent n is in ``zones[n % len(zones)]``. Empty: each agent takes its node's
            zone (custom resource ``zone:<name>``, else the node label
            ``ray.io/availability-zone``), or none. Agents of a zone share one cache.
        groups: agent groups besides ``default`` (the group of ``agents``), each with
            its own listener ports and roles; clients see only the group they
            bootstrapped to.
        agents_per_node: 0: ``agents`` agents in all (the embedded cluster, resizable
            with ``ray-stream scale``). K > 0: K agents of the default group (and each
            group's ``agents``) on every alive Ray node, following nodes that join and
            leave.
        cache_shared: read chunks through their owner in the zone (one GET per chunk
            per zone) rather than each agent from the store.
        cache_peer_timeout_ms: how long an agent waits for a chunk's owner before it
            reads the object store itself: the most a slow or dead owner adds to a read.
        actor_resources: custom Ray resources (name, amount) the metadata, fleet and
            counted agents ask for, which places the cluster on the nodes that have
            them (per-node agents are pinned to their node instead).

    Metadata durability and recovery (docs/design/0002-metadata-durability.md):

    Attributes:
        snapshot_every_rounds: write a SQLite snapshot to the object store after this
            many journal entries. Fewer means more snapshot PUTs (each the size of the
            whole metadata database); more means a longer journal to replay (one GET per
            entry, fetched in parallel) when the metadata actor restarts.
        snapshot_interval_s: also snapshot when this much time passed since the last
            one and something was journaled since.
        journal_put_timeout_s: how long one journal write is retried (with backoff) on
            object-store errors before its commit round fails with StorageUnavailable.
            The entry then stays "in doubt" and is re-written before the next round.
        metadata_retry_s: how long agents resend calls to a metadata actor that is
            restarting (and segment commits whose journal write failed: they are safe
            to resend) before failing producers with Unavailable. Kafka clients time
            requests out after 30 s by default.
        metadata_start_timeout_s: how long a starting metadata actor retries reading
            the object store before giving up (the actor then dies loudly).
        segment_put_attempts: attempts (with backoff) for one segment PUT before the
            producers of that flush get StorageUnavailable.
        agent_buffer_bytes: produce bytes an agent holds (buffered plus in flight)
            before it answers new produce requests with Unavailable; 0 means
            ``8 * flush_bytes``. Bounds agent memory when the object store is slow.
        orphan_grace_s: a segment object no committed batch references is deleted
            once its key (ULID) time is older than this. Must exceed the longest time
            from an agent's PUT to its commit (agents give up after half of it).
        orphan_sweep_interval_s: how often the metadata actor lists ``segments/`` to
            delete orphans (one LIST per 1000 objects); 0 disables the sweep.

    Consumer groups (the classic protocol's coordinator, core/group.py):

    Attributes:
        group_min_session_timeout_ms / group_max_session_timeout_ms: the session
            timeouts a JoinGroup may ask for, inclusive (Kafka's
            ``group.min.session.timeout.ms`` 6 s and ``group.max.session.timeout.ms``
            30 min); outside them the join gets INVALID_SESSION_TIMEOUT. A lower minimum
            lets members ask to have a dead peer's partitions taken over sooner, at the
            cost of more heartbeats (each one metadata-actor call) and of members
            declared dead during a GC pause or a busy moment; a higher maximum lets a
            silent member hold its partitions longer.

    Authentication on the Kafka listeners (docs/design/0008-authentication.md; the
    Python API is not checked: Ray's ports are its trust boundary):

    Attributes:
        tls_cert_pem / tls_key_pem: the listeners' certificate chain and private key
            (PEM *contents*, read by the CLI from ``--tls-cert`` / ``--tls-key`` on the
            machine that starts the cluster, so they reach agents on every node with
            the Settings; no file has to exist on the nodes). Empty: plaintext. TLS
            costs a handshake per connection and some CPU per byte on the agents;
            nothing on the object store.
        tls_ca_pem: CA certificates (PEM contents) client certificates must chain to;
            set, every client must present one, and its subject's CN becomes the
            connection's principal ``User:<CN>`` (a SASL login overrides it).
        tls_handshake_timeout_s: a TLS handshake not finished by then is dropped (a
            client that connects and stays silent holds a socket only this long).
        sasl_mechanisms: SASL mechanisms a client must authenticate with before any
            request but ApiVersions (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``);
            empty: no SASL. Each login costs one metadata-actor call (the credential);
            PLAIN also costs one PBKDF2 derivation (a few ms of agent CPU).
        allow_plaintext_sasl: let PLAIN run without TLS (the password then crosses the
            network readable); refused by default.

    Authorization (core/acl.py; the Python API is not checked: Ray's ports are its
    trust boundary):

    Attributes:
        authorizer: ``none`` (default): every Kafka client may do everything. ``acl``:
            Kafka requests are checked against the ACLs stored in the metadata, deny by
            default. Agents hold the ACLs in memory and long-poll the metadata actor for
            changes, so a check costs no call (a change reaches them in milliseconds).
        super_users: principals (``User:<name>``) every check lets through.
    """

    data_dir: str = DEFAULT_DATA_DIR
    object_store: str = ""
    agents: int = 1
    linger_ms: int = 250
    flush_bytes: int = 8 * 1024 * 1024
    commit_group_wait_ms: int = -1
    max_record_bytes: int = 1024 * 1024 + 12
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_advertised_host: str = ""
    auto_create_topics: bool = False
    default_partitions: int = 1
    cache_bytes: int = 256 * 1024 * 1024
    max_request_bytes: int = 100 * 1024 * 1024
    namespace: str = NAMESPACE
    snapshot_every_rounds: int = 500
    snapshot_interval_s: float = 300.0
    journal_put_timeout_s: float = 10.0
    metadata_retry_s: float = 30.0
    metadata_start_timeout_s: float = 120.0
    segment_put_attempts: int = 6
    agent_buffer_bytes: int = 0
    orphan_grace_s: float = 600.0
    orphan_sweep_interval_s: float = 60.0
    zones: tuple[str, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    agents_per_node: int = 0
    cache_shared: bool = True
    cache_peer_timeout_ms: int = 2000
    actor_resources: tuple[tuple[str, float], ...] = ()
    group_min_session_timeout_ms: int = 6_000
    group_max_session_timeout_ms: int = 1_800_000
    tls_cert_pem: str = ""
    tls_key_pem: str = field(default="", repr=False)  # a secret: never printed
    tls_ca_pem: str = ""
    tls_handshake_timeout_s: float = 10.0
    sasl_mechanisms: tuple[str, ...] = ()
    allow_plaintext_sasl: bool = False
    authorizer: str = "none"
    super_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_authorization(self.authorizer, self.super_users)
        _check_authentication(self)
        unique_groups([GroupSpec(DEFAULT_GROUP), *self.groups])
        for zone in self.zones:
            if not zone or "," in zone or "=" in zone:
                raise InvalidConfig(f"setting 'zones' has an invalid zone name {zone!r}")
        if self.zones and self.agents_per_node:
            raise InvalidConfig(
                "settings 'zones' and 'agents_per_node' exclude each other: zones simulate "
                "zones on one machine; per-node agents take their node's zone (resource "
                "zone:<name> or label ray.io/availability-zone)"
            )
        checks = {
            "agents": self.agents >= 0 and (self.agents >= 1 or bool(self.groups)),
            "linger_ms": 0 <= self.linger_ms <= 60_000,
            "flush_bytes": 1024 <= self.flush_bytes <= 1024**3,
            "commit_group_wait_ms": -1 <= self.commit_group_wait_ms <= 60_000,
            "max_record_bytes": 1 <= self.max_record_bytes <= 64 * 1024**2,
            "kafka_port": -1 <= self.kafka_port <= 65535,
            "default_partitions": self.default_partitions >= 1,
            "cache_bytes": self.cache_bytes >= 0,
            "snapshot_every_rounds": self.snapshot_every_rounds >= 1,
            "snapshot_interval_s": self.snapshot_interval_s > 0,
            "journal_put_timeout_s": self.journal_put_timeout_s >= 0,
            "metadata_retry_s": self.metadata_retry_s >= 0,
            "metadata_start_timeout_s": self.metadata_start_timeout_s >= 0,
            "segment_put_attempts": self.segment_put_attempts >= 1,
            "agent_buffer_bytes": self.agent_buffer_bytes >= 0,
            "orphan_grace_s": self.orphan_grace_s > 0,
            "orphan_sweep_interval_s": self.orphan_sweep_interval_s >= 0,
            "agents_per_node": 0 <= self.agents_per_node <= 64,
            "cache_peer_timeout_ms": 0 <= self.cache_peer_timeout_ms <= 60_000,
            "group_min_session_timeout_ms": self.group_min_session_timeout_ms >= 1,
            "group_max_session_timeout_ms": (
                self.group_max_session_timeout_ms >= self.group_min_session_timeout_ms
            ),
        }
        for key, ok in checks.items():
            if not ok:
                raise InvalidConfig(f"setting {key!r} has invalid value {getattr(self, key)!r}")

    @property
    def resolved_data_dir(self) -> str:
        return str(Path(self.data_dir).expanduser().resolve())

    @property
    def resolved_object_store(self) -> str:
        if self.object_store:
            if self.object_store.startswith(("s3://", "memory://", "file://", "faulty+")):
                return self.object_store
            return "file://" + str(Path(self.object_store).expanduser().resolve())
        return "file://" + str(Path(self.resolved_data_dir) / "objects")

    def advertised_host(self, node_ip: str) -> str:
        """The host an agent on the node with ``node_ip`` names in Metadata answers."""
        if self.kafka_advertised_host:
            return self.kafka_advertised_host
        if self.kafka_host in WILDCARD_HOSTS:
            return node_ip
        return self.kafka_host

    def group(self, name: str) -> GroupSpec:
        """The spec of agent group ``name`` (``default``: ``agents`` on ``kafka_port``).

        Raises:
            InvalidConfig: no such group.
        """
        if name == DEFAULT_GROUP:
            return GroupSpec(DEFAULT_GROUP, agents=self.agents, kafka_port=self.kafka_port)
        for spec in self.groups:
            if spec.name == name:
                return spec
        raise InvalidConfig(f"no agent group {name!r}; groups: {self.group_names}")

    @property
    def group_names(self) -> list[str]:
        return [DEFAULT_GROUP, *(g.name for g in self.groups)]

    @property
    def resolved_commit_group_wait_ms(self) -> int:
        if self.commit_group_wait_ms < 0:
            return self.linger_ms
        return self.commit_group_wait_ms

    @property
    def resolved_agent_buffer_bytes(self) -> int:
        return self.agent_buffer_bytes or 8 * self.flush_bytes

    def with_overrides(self, **kwargs: object) -> Settings:
        clean = {k: v for k, v in kwargs.items() if v is not None}
        return replace(self, **clean)  # type: ignore[arg-type]


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _check_authentication(settings: Settings) -> None:
    """TLS material comes in pairs and looks like PEM; SASL mechanisms are known;
    PLAIN needs TLS unless explicitly allowed. Raises InvalidConfig naming the flag."""
    cert, key, ca = settings.tls_cert_pem, settings.tls_key_pem, settings.tls_ca_pem
    if bool(cert) != bool(key):
        raise InvalidConfig("TLS needs both --tls-cert and --tls-key (settings tls_*_pem)")
    if ca and not cert:
        raise InvalidConfig("--tls-ca (client certificates) needs --tls-cert and --tls-key")
    for name, value in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if value and "-----BEGIN " not in value:
            raise InvalidConfig(f"{name}: not a PEM file (no '-----BEGIN ' line)")
    unknown = [m for m in settings.sasl_mechanisms if m not in SASL_MECHANISMS]
    if unknown or len(set(settings.sasl_mechanisms)) != len(settings.sasl_mechanisms):
        raise InvalidConfig(
            f"--sasl-mechanisms {','.join(settings.sasl_mechanisms)!r}: each once, of "
            f"{','.join(SASL_MECHANISMS)}"
        )
    if "PLAIN" in settings.sasl_mechanisms and not cert and not settings.allow_plaintext_sasl:
        raise InvalidConfig(
            "--sasl-mechanisms PLAIN without TLS would send passwords in the clear: add "
            "--tls-cert/--tls-key, or --allow-plaintext-sasl on a trusted network"
        )
    if not settings.tls_handshake_timeout_s > 0:
        timeout = settings.tls_handshake_timeout_s
        raise InvalidConfig(f"setting 'tls_handshake_timeout_s' has invalid value {timeout!r}")


def parse_sasl_mechanisms(text: str) -> tuple[str, ...]:
    """``PLAIN,SCRAM-SHA-256`` -> a tuple (validated by Settings)."""
    return tuple(m.strip().upper() for m in text.split(",") if m.strip())


def read_pem(path: str, *, flag: str) -> str:
    """The contents of the PEM file ``path`` given as ``flag``.

    Raises:
        InvalidConfig: the file cannot be read (the message names the flag and path).
    """
    try:
        return Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfig(f"{flag} {path}: cannot read it ({exc})") from exc


AUTHORIZERS = ("none", "acl")


def _check_authorization(authorizer: str, super_users: tuple[str, ...]) -> None:
    if authorizer not in AUTHORIZERS:
        raise InvalidConfig(
            f"setting 'authorizer' must be one of {AUTHORIZERS}, got {authorizer!r}"
        )
    if isinstance(super_users, str):
        raise InvalidConfig("setting 'super_users' must be a tuple of principals, not a string")
    for principal in super_users:
        name = principal.partition(":")[2] if isinstance(principal, str) else ""
        if not name or principal.startswith(":") or "," in principal:
            raise InvalidConfig(
                f"setting 'super_users' has {principal!r}: use Kafka's User:<name> form"
            )


def parse_principals(text: str) -> tuple[str, ...]:
    """``User:admin,User:ops`` -> ``("User:admin", "User:ops")`` (checked by Settings)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


_ENV_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "RAY_STREAM_DATA_DIR": ("data_dir", str),
    "RAY_STREAM_OBJECT_STORE": ("object_store", str),
    "RAY_STREAM_AGENTS": ("agents", int),
    "RAY_STREAM_LINGER_MS": ("linger_ms", int),
    "RAY_STREAM_FLUSH_BYTES": ("flush_bytes", int),
    "RAY_STREAM_KAFKA_PORT": ("kafka_port", int),
    "RAY_STREAM_KAFKA_HOST": ("kafka_host", str),
    "RAY_STREAM_KAFKA_ADVERTISED_HOST": ("kafka_advertised_host", str),
    "RAY_STREAM_GROUP_MIN_SESSION_TIMEOUT_MS": ("group_min_session_timeout_ms", int),
    "RAY_STREAM_GROUP_MAX_SESSION_TIMEOUT_MS": ("group_max_session_timeout_ms", int),
    "RAY_STREAM_AUTHORIZER": ("authorizer", str),
    "RAY_STREAM_SUPER_USERS": ("super_users", parse_principals),
    # TLS files are read where the settings are made (this process), by path.
    "RAY_STREAM_TLS_CERT": ("tls_cert_pem", lambda p: read_pem(p, flag="RAY_STREAM_TLS_CERT")),
    "RAY_STREAM_TLS_KEY": ("tls_key_pem", lambda p: read_pem(p, flag="RAY_STREAM_TLS_KEY")),
    "RAY_STREAM_TLS_CA": ("tls_ca_pem", lambda p: read_pem(p, flag="RAY_STREAM_TLS_CA")),
    "RAY_STREAM_SASL_MECHANISMS": ("sasl_mechanisms", parse_sasl_mechanisms),
    "RAY_STREAM_ALLOW_PLAINTEXT_SASL": ("allow_plaintext_sasl", lambda v: _flag(v)),
}


def _flag(value: str) -> bool:
    """An environment flag: 1/true/yes or 0/false/no. Raises ValueError otherwise."""
    lowered = value.strip().lower()
    if lowered not in ("1", "true", "yes", "0", "false", "no", ""):
        raise ValueError(value)
    return lowered in ("1", "true", "yes")


def settings_from_env(**overrides: object) -> Settings:
    """Settings from ``RAY_STREAM_*`` variables, then explicit overrides (None = unset)."""
    values: dict[str, object] = {}
    for env, (key, kind) in _ENV_KEYS.items():
        raw = os.environ.get(env)
        if raw is None:
            continue
        try:
            values[key] = kind(raw)
        except ValueError as exc:
            raise InvalidConfig(f"environment variable {env}={raw!r} is not a valid {key}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]


def state_dir() -> Path:
    """Where ``ray-stream start`` records how to reach the running cluster."""
    return Path(os.environ.get("RAY_STREAM_STATE_DIR", "~/.ray_stream")).expanduser()
