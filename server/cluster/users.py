"""Users in a cluster: the sessions of each user, on every node (``sb:u:{user}``).

A user's set holds the client ids of its sessions. A new session of a user is reserved and
counted in one script (``reserve_user_id``), so MAX_SESSIONS_PER_USER holds across nodes even
when a user's tabs connect to several nodes at once. The set is kept by the session writes
(``write_session`` adds, ``delete_session`` removes) and expires with the last of the user's
sessions; ids whose session is gone (expired with a node that died) are dropped when read.
"""

from __future__ import annotations

import time

from server.cluster.store import IDX_KEY, RedisStore, s_key, text, u_key
from server.errors import TooManySessions
from server.sessions import SessionRegistry


class ClusterUsers:
    def __init__(self, store: RedisStore, registry: SessionRegistry) -> None:
        self.store = store
        self.registry = registry

    async def claim(self, client_id: str, user_id: str, per_user: int) -> str | None:
        """Reserve ``client_id`` for a new session of ``user_id`` (None: the id is taken);
        raises TooManySessions when the user holds ``per_user`` sessions anywhere."""
        store = self.store
        async with store.guard():
            result = await store.scripts["reserve_user_id"](
                keys=[s_key(client_id), IDX_KEY, u_key(user_id)],
                args=[store.me, store.key_ttl, client_id, repr(time.time()), user_id,
                      per_user])
        if result == -1:
            raise TooManySessions(user_id, per_user)
        return client_id if result == 1 else None

    async def clients(self, user_id: str) -> list[str]:
        """The client ids of the user's sessions anywhere (this node's first)."""
        store = self.store
        local = list(self.registry.users.get(user_id, ()))
        async with store.guard():
            members = [text(m) for m in await store.redis.smembers(u_key(user_id))]
            others = sorted(m for m in members if m not in local)
            if not others:
                return local
            pipe = store.redis.pipeline(transaction=False)
            for client_id in others:
                pipe.exists(s_key(client_id))
            alive = await pipe.execute()
            gone = [m for m, ok in zip(others, alive, strict=True) if not ok]
            if gone:
                await store.redis.srem(u_key(user_id), *gone)
        return local + [m for m, ok in zip(others, alive, strict=True) if ok]
