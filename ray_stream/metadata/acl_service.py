"""AclService: the metadata actor's ACLs (core/acl.py), stored like every other metadata.

Rules this module keeps:

1. **One write path.** ACL changes are ``Changes`` rows (``acls``, ``deleted_acls``)
   written through ``MetadataWriter``: SQLite cache, one journal PUT, then applied; the
   snapshots hold the ``acls`` table. So ACLs survive a metadata failover and a full
   restart exactly as topics do, and are visible only once durable.
2. **Versioned.** ``version`` starts at ``epoch << 32`` (a new incarnation never repeats
   an older one's version) and grows by one with every applied change that touches
   ACLs. ``watch`` answers as soon as it differs from the caller's: agents long-poll it
   and hold the bindings in memory (agent/acl_cache.py), so no request costs a call.
3. Validation happens here, once, where bindings enter (``acl.check_binding``).

Never: authorize requests (the agents do, from their copy).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from ray_stream.core.acl import (
    AclBinding,
    AclFilter,
    AclOutcome,
    AclSnapshot,
    check_binding,
    check_filter,
)
from ray_stream.core.sequencer import Changes, Sequencer
from ray_stream.errors import InvalidRequest
from ray_stream.metadata.writer import MetadataWriter

__all__ = ["AclService"]


class AclService:
    """Create, describe, delete and watch ACLs (see the module doc).

    Args:
        seq: the sequencer state (it holds the bindings).
        writer: the one write path.
        epoch: this incarnation's epoch (the version's high bits).
    """

    def __init__(self, seq: Sequencer, writer: MetadataWriter, *, epoch: int) -> None:
        self._seq = seq
        self._writer = writer
        self.version = epoch << 32
        self._changed = asyncio.Event()

    def observe(self, changes: Changes) -> None:
        """Called with every applied change set: bump the version when ACLs changed."""
        if changes.acls or changes.deleted_acls:
            self.version += 1
            self._changed.set()
            self._changed = asyncio.Event()

    async def create(self, bindings: Sequence[AclBinding]) -> list[AclOutcome]:
        """Store the valid bindings in one durable write; one outcome per binding
        (InvalidRequest for one that cannot be stored; existing ones are no-ops).

        Raises:
            StorageUnavailable, Fenced: nothing was stored.
        """
        outcomes: list[AclOutcome] = []
        valid: list[AclBinding] = []
        for binding in bindings:
            try:
                if not isinstance(binding, AclBinding):
                    raise InvalidRequest(f"expected an AclBinding, got {type(binding).__name__}")
                valid.append(check_binding(binding))
                outcomes.append(AclOutcome((valid[-1],)))
            except InvalidRequest as exc:
                outcomes.append(AclOutcome(error=exc))
        if valid:
            await self._writer.write(
                lambda: (None, self._seq.plan_create_acls(valid)), then=lambda _: None
            )
        return outcomes

    async def describe(self, acl_filter: AclFilter) -> list[AclBinding]:
        """The bindings ``acl_filter`` matches.

        Raises:
            InvalidRequest: the filter has an UNKNOWN code or a non-string name.
        """
        _check(acl_filter)
        return [b for b in self._seq.acls() if acl_filter.matches(b)]

    async def delete(self, filters: Sequence[AclFilter]) -> list[AclOutcome]:
        """Delete every binding any valid filter matches, in one durable write; per
        filter, the bindings it matched (or InvalidRequest).

        Raises:
            StorageUnavailable, Fenced: nothing was deleted.
        """
        errors: dict[int, InvalidRequest] = {}
        for i, acl_filter in enumerate(filters):
            try:
                _check(acl_filter)
            except InvalidRequest as exc:
                errors[i] = exc
        valid = [f for i, f in enumerate(filters) if i not in errors]

        def plan() -> tuple[list[list[AclBinding]], Changes]:
            return self._seq.plan_delete_acls(valid)

        matched = iter(await self._writer.write(plan, then=lambda found: found))
        return [
            AclOutcome(error=errors[i]) if i in errors else AclOutcome(tuple(next(matched)))
            for i in range(len(filters))
        ]

    async def watch(self, version: int, timeout_s: float) -> AclSnapshot:
        """Every binding as soon as the version differs from ``version``; after
        ``timeout_s`` without a change, the version alone (``bindings`` None)."""
        if version == self.version:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(timeout_s, 0.0))
        if version == self.version:
            return AclSnapshot(self.version)
        return AclSnapshot(self.version, tuple(self._seq.acls()))


def _check(acl_filter: AclFilter) -> None:
    if not isinstance(acl_filter, AclFilter):
        raise InvalidRequest(f"expected an AclFilter, got {type(acl_filter).__name__}")
    check_filter(acl_filter)
