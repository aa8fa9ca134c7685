"""Consultation chat benchmark (issue 5, item 9).

Starts the servers itself (Daphne, one or two processes), seeds N consultations, and
drives them from this process with real WebSocket clients: every patient and doctor
sends M messages (closed loop: the next one after the ack), and the other side times
each ``message.new`` against the send time written into the text. It prints delivered
messages per second, one-way latency p50/p95/p99, and server memory per idle
connection, for the consultation socket and for a bare Channels relay (no auth, no
database) measured in the same invocation, with the ratio. An open-loop run sends at a
fixed total rate and counts losses.

    python -m bench.chat_bench                       # embedded default, N=10,100,1000
    python -m bench.chat_bench --modes pg1,pg2 \
        --database-url postgres://postgres@127.0.0.1:5432/ih_bench \
        --redis-url redis://127.0.0.1:6379/14
    python -m bench.chat_bench --modes pg2 --sizes 1000 --open-loop-rate 250

Modes: ``embedded`` (SQLite, in-memory layer, 1 process), ``pg1`` / ``pg2`` (PostgreSQL
and Redis, 1 or 2 Daphne processes; with 2 the patients use one and the doctors the
other). ``--layer pubsub`` switches the Redis layer to RedisPubSubChannelLayer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = Origin("http://127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextmanager
def servers(app: str, count: int, env: dict[str, str]) -> Iterator[tuple[list[int], list[int]]]:
    ports = [free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(p), app],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for port in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("server did not start") from None
                    time.sleep(0.2)
        yield ports, [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@dataclass
class Result:
    label: str
    rooms: int
    delivered: int
    expected: int
    seconds: float
    latencies_ms: list[float]
    kb_per_connection: float

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]


class Client:
    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name
        self.acks: dict[str, asyncio.Future[int]] = {}
        self.latencies: list[float] = []
        self.received = 0
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for raw in self.ws:
            now = time.time_ns()
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "message.ack":
                future = self.acks.pop(frame["client_msg_id"], None)
                if future is not None and not future.done():
                    future.set_result(frame["seq"])
            elif kind == "message.new":
                text = frame["message"]["text"]
                sender, _, sent_ns = text.partition(":")
                if sender != self.name:
                    self.received += 1
                    self.latencies.append((now - int(sent_ns)) / 1e6)

    async def send(self, *, wait: bool) -> None:
        msg_id = str(uuid.uuid4())
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.acks[msg_id] = future
        await self.ws.send(
            json.dumps(
                {
                    "type": "message.send",
                    "client_msg_id": msg_id,
                    "kind": "text",
                    "text": f"{self.name}:{time.time_ns()}",
                }
            )
        )
        if wait:
            await asyncio.wait_for(future, 30)


async def open_pairs(urls: list[tuple[str, str]]) -> list[tuple[Client, Client]]:
    pairs: list[tuple[Client, Client]] = []
    sem = asyncio.Semaphore(50)

    async def one(url: str, name: str) -> Client:
        async with sem:
            ws = await connect(url, origin=ORIGIN, max_queue=None, open_timeout=30)
            await asyncio.wait_for(ws.recv(), 30)  # sync / hello
            return Client(ws, name)

    for i in range(0, len(urls), 200):
        chunk = urls[i : i + 200]
        made = await asyncio.gather(*[asyncio.gather(one(p, "p"), one(d, "d")) for p, d in chunk])
        pairs.extend((a, b) for a, b in made)
    return pairs


async def run_closed_loop(
    label: str, urls: list[tuple[str, str]], pids: list[int], messages: int
) -> Result:
    before = sum(rss_kb(pid) for pid in pids)
    pairs = await open_pairs(urls)
    await asyncio.sleep(1)
    after = sum(rss_kb(pid) for pid in pids)
    clients = [c for pair in pairs for c in pair]

    async def talk(client: Client) -> None:
        for _ in range(messages):
            await client.send(wait=True)

    start = time.monotonic()
    await asyncio.gather(*[talk(c) for c in clients])
    expected = len(clients) * messages
    deadline = time.monotonic() + 30
    while sum(c.received for c in clients) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    seconds = time.monotonic() - start
    for c in clients:
        await c.ws.close()
    return Result(
        label,
        len(pairs),
        sum(c.received for c in clients),
        expected,
        seconds,
        [x for c in clients for x in c.latencies],
        (after - before) / max(1, len(clients)),
    )


async def run_open_loop(
    label: str, urls: list[tuple[str, str]], pids: list[int], rate: float, seconds: float
) -> Result:
    pairs = await open_pairs(urls)
    await asyncio.sleep(1)
    total = int(rate * seconds)
    start = time.monotonic()
    for k in range(total):
        patient, _ = pairs[k % len(pairs)]
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await patient.send(wait=False)
    doctors = [d for _, d in pairs]
    deadline = time.monotonic() + 10
    while sum(d.received for d in doctors) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - start
    for p, d in pairs:
        await p.ws.close()
        await d.ws.close()
    return Result(
        label,
        len(pairs),
        sum(d.received for d in doctors),
        total,
        elapsed,
        [x for d in doctors for x in d.latencies],
        0.0,
    )


def prepare_database(env: dict[str, str]) -> None:
    url = env.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import psycopg

        base, _, name = url.rpartition("/")
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


def seed(env: dict[str, str], rooms: int) -> list[dict[str, str]]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.seed_rooms", str(rooms)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return list(json.loads(out.stdout))


def mode_env(mode: str, args: argparse.Namespace, var_dir: str) -> tuple[dict[str, str], int]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env.update(
        DEMO_MODE="1",
        VAR_DIR=var_dir,
        CHANNEL_LAYER=args.layer,
        CHAT_MAX_FRAMES_PER_SECOND="1000",
        LOG_LEVEL="WARNING",
        CHANNEL_LAYER_PREFIX=f"bench{uuid.uuid4().hex[:6]}",
    )
    if mode == "embedded":
        return env, 1
    if not (args.database_url and args.redis_url):
        raise SystemExit(f"mode {mode} needs --database-url and --redis-url")
    env.update(DATABASE_URL=args.database_url, REDIS_URL=args.redis_url)
    return env, 2 if mode == "pg2" else 1


def urls_for(rooms: list[dict[str, str]], ports: list[int], relay: bool) -> list[tuple[str, str]]:
    a, b = ports[0], ports[-1]
    if relay:
        return [
            (
                f"ws://127.0.0.1:{a}/ws/relay/{r['room']}/",
                f"ws://127.0.0.1:{b}/ws/relay/{r['room']}/",
            )
            for r in rooms
        ]
    return [
        (
            f"ws://127.0.0.1:{a}/ws/consultations/{r['room']}/?ticket={r['patient']}",
            f"ws://127.0.0.1:{b}/ws/consultations/{r['room']}/?ticket={r['doctor']}",
        )
        for r in rooms
    ]


def report(real: Result, relay: Result) -> None:
    ratio = real.rate / relay.rate if relay.rate else float("nan")
    for r in (relay, real):
        lost = r.expected - r.delivered
        print(
            f"  {r.label:<28} rooms={r.rooms:<5} {r.rate:9.0f} msg/s  "
            f"p50={r.pct(0.50):7.1f} ms  p95={r.pct(0.95):7.1f} ms  p99={r.pct(0.99):7.1f} ms  "
            f"lost={lost:<4} mem/conn={r.kb_per_connection:6.1f} KB"
        )
    print(f"  ratio persisted/relay throughput: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="embedded")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--messages", type=int, default=10, help="per participant")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", ""))
    parser.add_argument("--layer", choices=["core", "pubsub"], default="pubsub")
    parser.add_argument("--open-loop-rate", type=float, default=0.0)
    parser.add_argument("--open-loop-seconds", type=float, default=20.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"chat bench: python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"layer={args.layer} with Redis (embedded: in-memory), "
        f"{args.messages} messages per participant"
    )
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="ih-bench-") as var_dir:
            env, processes = mode_env(mode, args, var_dir)
            prepare_database(env)
            for size in sizes:
                rooms = seed(env, size)
                print(f"\n[{mode}, {processes} daphne process(es), {size} rooms]")
                with servers("bench.relay:application", processes, env) as (ports, pids):
                    relay = asyncio.run(
                        run_closed_loop(
                            "relay (no persistence)",
                            urls_for(rooms, ports, True),
                            pids,
                            args.messages,
                        )
                    )
                with servers("backend.asgi:application", processes, env) as (ports, pids):
                    httpx.get(f"http://127.0.0.1:{ports[0]}/healthz", timeout=10)
                    real = asyncio.run(
                        run_closed_loop(
                            "consultation socket",
                            urls_for(rooms, ports, False),
                            pids,
                            args.messages,
                        )
                    )
                report(real, relay)
            if args.open_loop_rate:
                size = max(sizes)
                rooms = seed(env, size)
                print(
                    f"\n[{mode}, open loop {args.open_loop_rate:.0f} msg/s over {size} rooms, "
                    f"{args.open_loop_seconds:.0f} s]"
                )
                with servers("bench.relay:application", processes, env) as (ports, pids):
                    relay = asyncio.run(
                        run_open_loop(
                            "relay (no persistence)",
                            urls_for(rooms, ports, True),
                            pids,
                            args.open_loop_rate,
                            args.open_loop_seconds,
                        )
                    )
                with servers("backend.asgi:application", processes, env) as (ports, pids):
                    real = asyncio.run(
                        run_open_loop(
                            "consultation socket",
                            urls_for(rooms, ports, False),
                            pids,
                            args.open_loop_rate,
                            args.open_loop_seconds,
                        )
                    )
                report(real, relay)


if __name__ == "__main__":
    main()
