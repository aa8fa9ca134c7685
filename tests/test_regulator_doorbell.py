"""The outbox doorbell: a commit's ring is sent from the process's own thread, rings
close together become one drain, and none is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from regulators.services import Doorbell


def _eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.005)


def test_a_burst_of_rings_queues_one_or_two_drains_and_a_later_ring_one_more() -> None:
    sent: list[float] = []
    bell = Doorbell(lambda: sent.append(time.monotonic()), interval=0.2)
    for _ in range(200):  # records committed by many requests in a burst
        bell.ring()
    _eventually(lambda: len(sent) >= 1)
    time.sleep(0.5)  # the interval twice over: whatever was coalesced has been sent
    assert 1 <= len(sent) <= 2
    if len(sent) == 2:
        assert sent[1] - sent[0] >= 0.2  # never two drains within the interval

    before = len(sent)
    time.sleep(0.25)
    bell.ring()  # quiet for longer than the interval: this one goes at once
    _eventually(lambda: len(sent) == before + 1, seconds=1.0)
    time.sleep(0.3)
    assert len(sent) == before + 1


def test_a_ring_while_a_drain_is_being_queued_is_not_lost() -> None:
    entered, release = threading.Event(), threading.Event()
    sent: list[int] = []

    def send() -> None:
        sent.append(1)
        if len(sent) == 1:
            entered.set()
            release.wait(5)

    bell = Doorbell(send, interval=0.01)
    bell.ring()
    assert entered.wait(5)
    bell.ring()  # a record committed while the first message is on its way
    release.set()
    _eventually(lambda: len(sent) == 2)


def test_a_failed_send_does_not_silence_the_bell() -> None:
    calls: list[int] = []

    def send() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    bell = Doorbell(send, interval=0.01)
    bell.ring()
    _eventually(lambda: len(calls) == 1)
    time.sleep(0.05)
    bell.ring()
    _eventually(lambda: len(calls) == 2)
