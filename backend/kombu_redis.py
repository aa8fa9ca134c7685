"""Kombu's Redis transport, with one synchronous Redis client per channel.

Kombu's Redis channel builds a new ``redis.Redis`` object for each command it sends
(``Channel.conn_or_acquire``), and redis-py fills a table of about 90 response callbacks
in each one: three per Celery ``delay`` (0.09 ms of CPU each here, about a quarter of a
``delay``), paid on the web process for every patient push and regulator doorbell
(``python -m bench.rx_bench`` showed them beside the request's own work; cProfile counts
600 constructions for 200 messages before, none after). Here a channel keeps the client
it built and reuses it while its connection pool is the same; a client only holds the
pool and that table, and takes a connection from the pool for each command, as before.
The asynchronous client of a consuming worker is built as kombu builds it.

Selected by ``CELERY_BROKER_TRANSPORT`` when the broker is Redis (backend/settings.py).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(redis.Transport):
    Channel = Channel
