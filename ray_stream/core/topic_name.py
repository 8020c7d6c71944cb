"""Topic name rules, as Kafka enforces them (``org.apache.kafka.common.internals.Topic``).

A legal name is 1..249 characters of ``[a-zA-Z0-9._-]`` and is neither ``"."`` nor
``".."``. Two names *collide* when they are equal after mapping ``'.'`` to ``'_'``:
Kafka's metric names use that mapping, so it refuses to create the second one.
This module is pure: strings in, ``InvalidTopic`` out; it never looks at state.
"""

from __future__ import annotations

import re

from ray_stream.errors import InvalidTopic

MAX_TOPIC_NAME_LENGTH = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")


def validate_topic_name(name: object) -> str:
    """Check a topic name against Kafka's rules.

    Args:
        name: the proposed name (any object; non-strings are rejected).

    Returns:
        The name, unchanged.

    Raises:
        InvalidTopic: the name is not a string, is empty, longer than 249 characters,
            ``"."``/``".."``, or has a character outside ``[a-zA-Z0-9._-]``.
    """
    if not isinstance(name, str):
        raise InvalidTopic(f"topic name must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidTopic("topic name is empty")
    if name in (".", ".."):
        raise InvalidTopic(f"topic name cannot be {name!r}")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidTopic(
            f"topic name is {len(name)} characters, the limit is {MAX_TOPIC_NAME_LENGTH}"
        )
    if _LEGAL.fullmatch(name) is None:
        bad = sorted({c for c in name if _LEGAL.fullmatch(c) is None})
        raise InvalidTopic(
            f"topic name {name!r} has illegal characters {''.join(bad)!r}; "
            "allowed are ASCII letters, digits, '.', '_' and '-'"
        )
    return name


def collision_key(name: str) -> str:
    """The form two names share when they collide ('.' and '_' are the same)."""
    return name.replace(".", "_")
