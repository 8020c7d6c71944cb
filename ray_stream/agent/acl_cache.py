"""AclCache: one agent's copy of the ACLs, so authorizing a request costs no metadata call.

The metadata actor versions its ACLs (metadata/acl_service.py); this cache holds the
bindings of one version as an ``Authorizer`` (core/acl.py) and keeps it current with one
background long poll (``watch_acls``), which answers within milliseconds of a change and
otherwise once per ``ACL_WATCH_S``.

Rules:

1. **Off costs nothing.** With ``authorizer = none`` the cache answers an allow-all
   authorizer and never calls the metadata service.
2. **Staleness bound.** While the metadata actor is reachable, an agent enforces a
   change one long-poll answer after it is durable (milliseconds). When the actor is
   away (failover), the agent keeps enforcing the last ACLs it saw, retries every
   ``Backoff`` delay (at most 1 s), and reloads everything from the new incarnation
   (its versions start at a new epoch) once it answers: at most the failover time
   plus 1 s. ACLs can only change through the metadata actor, so while it is away
   they do not change.
3. **Fail closed.** Before the first load succeeds, every check is denied except for
   super-users (an agent that cannot read the ACLs does not guess them).

Never: Ray, sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ray_stream.config import Settings
from ray_stream.core.acl import AclSnapshot, Authorizer
from ray_stream.core.backoff import Backoff
from ray_stream.core.metadata_api import MetadataClient

__all__ = ["ACL_WATCH_S", "AclCache"]

log = logging.getLogger(__name__)

ACL_WATCH_S = 30.0


class AclCache:
    """The agent's ACLs (see the module doc).

    Args:
        meta: the metadata service.
        settings: ``authorizer`` and ``super_users``.
        rand: backoff jitter.
        wait_s: the long poll's length when nothing changes.
    """

    def __init__(
        self,
        meta: MetadataClient,
        *,
        settings: Settings,
        rand: random.Random,
        wait_s: float = ACL_WATCH_S,
    ) -> None:
        self._meta = meta
        self._rand = rand
        self._wait_s = wait_s
        self.enabled = settings.authorizer == "acl"
        self._super_users = frozenset(settings.super_users)
        self._current: Authorizer | None = None if self.enabled else Authorizer(enabled=False)
        self._deny_all = Authorizer(enabled=True, super_users=self._super_users)
        self.version = -1
        self.loads = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def authorizer(self) -> Authorizer:
        """The current ACLs' authorizer; the first call loads them (rule 3)."""
        current = self._current
        if current is not None:
            return current
        try:
            await self.refresh()
        except Exception as exc:  # rule 3: deny, do not guess
            log.warning("ACLs could not be loaded, denying all but super-users: %r", exc)
            return self._deny_all
        self._start()
        return self._current or self._deny_all

    async def refresh(self) -> None:
        """Load the ACLs now if they changed (after an ACL request through this agent,
        so its own client sees the change at once).

        Raises:
            Whatever the metadata call raised.
        """
        if not self.enabled:
            return
        async with self._lock:
            self._absorb(await self._meta.watch_acls(self.version, 0.0))

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start(self) -> None:
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="acl-watch")

    async def _loop(self) -> None:
        backoff = Backoff(rand=self._rand)
        while not self._closed:
            try:
                snapshot = await self._meta.watch_acls(self.version, self._wait_s)
            except Exception as exc:  # loop boundary: the metadata service is away (rule 2)
                log.info("ACL watch failed, keeping version %d: %s", self.version, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff = Backoff(rand=self._rand)
            self._absorb(snapshot)

    def _absorb(self, snapshot: AclSnapshot) -> None:
        if snapshot.bindings is None or snapshot.version == self.version:
            return
        self._current = Authorizer(snapshot.bindings, super_users=self._super_users)
        self.version = snapshot.version
        self.loads += 1
