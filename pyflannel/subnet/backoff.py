"""Waiting for etcd: bounded back-off, a throttled log line, and calls given up when the stop event is set."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Dict, Optional, TypeVar

from pyflannel.subnet.errors import Stopped

log = logging.getLogger("pyflannel.subnet")
_T = TypeVar("_T")

MAX_BACKOFF = 10.0  # seconds, upper bound of the back-off while etcd is unreachable
WATCH_BACKOFF = 4.0  # seconds, the watch's bound: a restored etcd is noticed within seconds


class Backoff:
    """Bounded exponential back-off: 0.5 s, 1 s, 2 s, ... up to ``high`` seconds."""

    def __init__(self, low: float = 0.5, high: float = MAX_BACKOFF) -> None:
        self.low = low
        self.high = high
        self.current = low

    def next(self) -> float:
        delay = self.current
        self.current = min(self.high, self.current * 2)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.current = self.low


class _Throttle:
    """Logs a repeated message only when it changes or every ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.last = None
        self.when = 0.0

    def __call__(self, level: int, msg: str) -> None:
        now = time.monotonic()
        if msg != self.last or now - self.when >= self.every:
            log.log(level, msg)
            self.last = msg
            self.when = now


def _wait(stop: Optional[threading.Event], seconds: float) -> None:
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Stopped()


STOP_POLL = 0.1  # seconds: how often a call waiting for etcd looks at the stop event


def until_stopped(stop: Optional[threading.Event], call: Callable[[], _T]) -> _T:
    """``call()``, given up (Stopped) as soon as ``stop`` is set.

    An etcd request to an address that drops packets blocks for the store's whole timeout (5 s, per
    endpoint); run in a helper thread, it no longer holds up a stop.  A call given up finishes (or
    times out) in the background; the caller is stopping and does not look at its result."""
    if stop is None:
        return call()
    if stop.is_set():
        raise Stopped()
    box: Dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed to the caller below, whatever it is
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="etcd-call", daemon=True).start()
    while not done.wait(STOP_POLL):
        if stop.is_set():
            raise Stopped()
    if "error" in box:
        raise box["error"]
    return box["value"]
