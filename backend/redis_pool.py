"""One Redis connection pool, and one client over it, per process for the Django cache.

Django keeps a cache backend object per request context (``django.core.cache.caches``
is context-local), and each new ``RedisCache`` builds its own connection pool, so under
ASGI every request opened (and later dropped) a fresh TCP connection to Redis. This pool
class, named in ``CACHES[...]["OPTIONS"]["pool_class"]``, hands every cache object of the
process the same pool for the same server and options. redis-py pools are thread-safe
and start afresh in a forked child.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class SharedConnectionPool(redis.ConnectionPool):
    _shared: dict[tuple[str, str], redis.ConnectionPool] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        key = (url, repr(sorted(kwargs.items())))
        with cls._shared_lock:
            pool = cls._shared.get(key)
            if pool is None:
                pool = cls._shared[key] = super().from_url(url, **kwargs)
        return pool


class SharedClientCacheClient(RedisCacheClient):
    """Django's client builds a ``redis.Redis`` object for every cache call (its
    constructor fills a table of about 90 response callbacks, about 0.1 ms); a client
    over a shared pool is thread-safe, so one per pool serves the whole process."""

    _clients: dict[int, redis.Redis] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            # The client kept here keeps its pool alive, so the id cannot be reused by
            # another pool; a race builds two clients over the same pool, both correct.
            made = self._client(connection_pool=pool)  # type: ignore[attr-defined]
            client = self._clients.setdefault(id(pool), made)
        return client


class SharedClientRedisCache(RedisCache):
    """``django.core.cache.backends.redis.RedisCache`` with one client per pool."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SharedClientCacheClient
