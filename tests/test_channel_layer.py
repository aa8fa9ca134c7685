"""The embedded default's channel layer (backend/channel_layer.py): Channels' in-memory
layer whose sweep of expired entries runs once per interval instead of on every
message. What a sweep removes must still be removed, at most one interval late."""

from __future__ import annotations

import asyncio
import datetime as dt

import time_machine
from channels.layers import InMemoryChannelLayer

from backend.channel_layer import SweepingInMemoryChannelLayer


async def _receives(layer: SweepingInMemoryChannelLayer, channel: str) -> dict[str, object] | None:
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout=0.05)
    except TimeoutError:
        return None


async def test_group_messages_reach_every_member_in_order() -> None:
    layer = SweepingInMemoryChannelLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    for n in range(3):
        await layer.group_send("room", {"type": "m", "n": n})
    for channel in (a, b):
        assert [(await layer.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_an_expired_message_is_dropped_and_its_channel_leaves_its_groups() -> None:
    layer = SweepingInMemoryChannelLayer(expiry=0.05, sweep_interval=0.1)
    stale, live = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", stale)
    await layer.group_add("room", live)
    await layer.send(stale, {"type": "m", "n": "old"})
    await layer.group_send("room", {"type": "m", "n": 0})  # swept now: nothing expired yet
    assert (await layer.receive(live))["n"] == 0
    await asyncio.sleep(0.15)  # past the expiry and the sweep interval
    await layer.group_send("room", {"type": "m", "n": 1})  # sweeps first, then sends
    assert (await layer.receive(live))["n"] == 1
    # The stale channel's undelivered messages expired, and it was dropped from the group
    # (Channels' rule), so the later group message did not reach it either.
    assert await _receives(layer, stale) is None


async def test_within_an_interval_no_sweep_runs() -> None:
    layer = SweepingInMemoryChannelLayer(expiry=0.01, sweep_interval=60)
    channel = await layer.new_channel()
    await layer.group_send("nobody", {"type": "m"})  # the first call sweeps
    await layer.send(channel, {"type": "m", "n": 1})
    await asyncio.sleep(0.03)  # expired, but the next sweep is a minute away
    assert (await layer.receive(channel))["n"] == 1


async def test_an_interval_of_zero_sweeps_on_every_call_like_channels() -> None:
    layer = SweepingInMemoryChannelLayer(expiry=0.01, sweep_interval=0.0)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m"})
    await asyncio.sleep(0.03)
    assert await _receives(layer, channel) is None


async def test_a_socket_open_for_days_stays_in_its_groups() -> None:
    layer = SweepingInMemoryChannelLayer()
    console = await layer.new_channel()
    await layer.group_add("doctor-queue", console)
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(days=3), tick=True):
        await layer.group_send("doctor-queue", {"type": "m", "n": "new request"})
        assert (await _receives(layer, console)) == {"type": "m", "n": "new request"}


async def test_channels_own_layer_would_have_dropped_it() -> None:
    """The control: Channels' default forgets members after a day."""
    layer = InMemoryChannelLayer()
    console = await layer.new_channel()
    await layer.group_add("doctor-queue", console)
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(days=3), tick=True):
        await layer.group_send("doctor-queue", {"type": "m"})
        assert await _receives(layer, console) is None
