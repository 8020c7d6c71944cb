"""The Kafka API versions this server answers: ``api_key -> (min, max)``.

Responsibility: one table, advertised verbatim in every ApiVersions response and checked
before a request body is parsed. A version outside its range is never parsed: ApiVersions
answers it with a v0 UNSUPPORTED_VERSION response (KIP-511), anything else closes the
connection, as Kafka's own broker does.

How the ranges were chosen: the lower bound is the oldest version ``kio`` 0.6.5 has a
schema for (Kafka 4 dropped e.g. Produce v0-2 and Fetch v0-3; every current client speaks
newer ones). The upper bound is the newest version whose semantics we implement, at least
what librdkafka 2.x, kafka-python 3, aiokafka 0.14 and the Java 3.x client send:

- Produce 11: v12 only announces server-side transaction verification (KIP-890) and v13
  switches to topic ids; we serve no transactions.
- Fetch 17 (Java 3.9; librdkafka asks 16): v13+ address topics by id (``TopicInfo.topic_id``);
  v18 only adds a replication-only tagged field.
- ListOffsets 8: timestamps -1 latest, -2 earliest, -3 max timestamp (v7; answered with
  the newest batch's last offset and max timestamp), -4 earliest local (v8; everything
  is "local" here); v9+ add tiered-storage sentinels. Lookups by time are at batch
  granularity (the metadata sequencer indexes batches, not records).
- Metadata 12: v13 adds a REBOOTSTRAP_REQUIRED top-level error (Kafka 4).
- OffsetCommit 9 / OffsetFetch 9: v10 switch to topic ids.
- FindCoordinator 5: v6 adds share groups. InitProducerId 5: v6 is two-phase commit.
- DescribeGroups 5: v6 changes dead-group semantics (KIP-1043). DescribeCluster 1: v2
  reports fenced brokers (KRaft).
- SaslHandshake 0-1 and SaslAuthenticate 0-2 (KIP-152; v0 handshake: raw tokens follow;
  v2 is only the flexible encoding); Describe/AlterUserScramCredentials 0 (KIP-554, the
  only versions). See docs/design/0008-authentication.md.
- DescribeAcls / CreateAcls / DeleteAcls 1-3 (kio has no v0; v1 added pattern types,
  KIP-290, and Kafka 4 dropped v0): the ACLs of core/acl.py (docs/design/0007-acls.md).

Changing a range needs a design note (STYLE.md section 10).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = ["API_NAMES", "SUPPORTED_VERSIONS", "ApiKey", "is_supported"]


class ApiKey:
    """Kafka API keys (the protocol's ``ApiKey`` enum) of the APIs served."""

    PRODUCE: Final = 0
    FETCH: Final = 1
    LIST_OFFSETS: Final = 2
    METADATA: Final = 3
    OFFSET_COMMIT: Final = 8
    OFFSET_FETCH: Final = 9
    FIND_COORDINATOR: Final = 10
    JOIN_GROUP: Final = 11
    HEARTBEAT: Final = 12
    LEAVE_GROUP: Final = 13
    SYNC_GROUP: Final = 14
    DESCRIBE_GROUPS: Final = 15
    LIST_GROUPS: Final = 16
    SASL_HANDSHAKE: Final = 17
    API_VERSIONS: Final = 18
    CREATE_TOPICS: Final = 19
    DELETE_TOPICS: Final = 20
    INIT_PRODUCER_ID: Final = 22
    DESCRIBE_ACLS: Final = 29
    CREATE_ACLS: Final = 30
    DELETE_ACLS: Final = 31
    DESCRIBE_CONFIGS: Final = 32
    CREATE_PARTITIONS: Final = 37
    SASL_AUTHENTICATE: Final = 36
    DELETE_GROUPS: Final = 42
    DESCRIBE_USER_SCRAM_CREDENTIALS: Final = 50
    ALTER_USER_SCRAM_CREDENTIALS: Final = 51
    DESCRIBE_CLUSTER: Final = 60


SUPPORTED_VERSIONS: Final = MappingProxyType(
    {
        ApiKey.PRODUCE: (3, 11),
        ApiKey.FETCH: (4, 17),
        ApiKey.LIST_OFFSETS: (1, 8),
        ApiKey.METADATA: (0, 12),
        ApiKey.OFFSET_COMMIT: (2, 9),
        ApiKey.OFFSET_FETCH: (1, 9),
        ApiKey.FIND_COORDINATOR: (0, 5),
        ApiKey.JOIN_GROUP: (0, 9),
        ApiKey.HEARTBEAT: (0, 4),
        ApiKey.LEAVE_GROUP: (0, 5),
        ApiKey.SYNC_GROUP: (0, 5),
        ApiKey.DESCRIBE_GROUPS: (0, 5),
        ApiKey.LIST_GROUPS: (0, 5),
        ApiKey.SASL_HANDSHAKE: (0, 1),
        ApiKey.API_VERSIONS: (0, 4),
        ApiKey.CREATE_TOPICS: (2, 7),
        ApiKey.DELETE_TOPICS: (1, 6),
        ApiKey.INIT_PRODUCER_ID: (0, 5),
        ApiKey.DESCRIBE_ACLS: (1, 3),
        ApiKey.CREATE_ACLS: (1, 3),
        ApiKey.DELETE_ACLS: (1, 3),
        ApiKey.DESCRIBE_CONFIGS: (1, 4),
        ApiKey.CREATE_PARTITIONS: (0, 3),
        ApiKey.SASL_AUTHENTICATE: (0, 2),
        ApiKey.DELETE_GROUPS: (0, 2),
        ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: (0, 0),
        ApiKey.ALTER_USER_SCRAM_CREDENTIALS: (0, 0),
        ApiKey.DESCRIBE_CLUSTER: (0, 1),
    }
)

API_NAMES: Final = MappingProxyType(
    {value: name for name, value in vars(ApiKey).items() if name.isupper()}
)


def is_supported(api_key: int, api_version: int) -> bool:
    """True if ``api_version`` of ``api_key`` is inside the served range."""
    served = SUPPORTED_VERSIONS.get(api_key)
    return served is not None and served[0] <= api_version <= served[1]
