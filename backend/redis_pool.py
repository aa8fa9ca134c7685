"""One Redis connection pool per process for the Django cache.

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
