"""Waiting on conditions, the one way tests wait.

Tests never assert the absence of something after a fixed sleep: a duplicate that
arrives after the sleep would pass unseen while daprd's redelivery backs off. They wait
for a condition that proves the work is over (``stream_settled``) and assert after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import redis

T = TypeVar("T")


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    every: float = 0.2,
    transient: tuple[type[Exception], ...] = (httpx.HTTPError,),
) -> T:
    """Poll ``check`` until it returns something truthy, and return that; an exception
    of a ``transient`` type (by default an HTTP error) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := check():
                return result
        except transient:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(every)


def stream_settled(client: redis.Redis, stream: str) -> bool:
    """True when every consumer group of a Dapr topic has read every entry and
    acknowledged it: nothing is pending (daprd acknowledges only once a delivery
    succeeded or went to its dead-letter topic) and nothing is left to read.

    A delivery that is being retried stays pending, so a settled stream has no
    redelivery still to come.
    """
    groups = client.xinfo_groups(stream)
    return bool(groups) and all(g["pending"] == 0 and g.get("lag") == 0 for g in groups)


def wait_settled(client: redis.Redis, *streams: str, timeout: float = 60) -> None:
    """Wait until every named topic is settled (see ``stream_settled``)."""
    for stream in streams:
        wait_for(
            f"{stream} delivered and acknowledged",
            lambda s=stream: stream_settled(client, s),
            timeout,
        )
