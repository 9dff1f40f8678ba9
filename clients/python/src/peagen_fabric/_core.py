"""Client logic shared by the sync and asyncio clients: settings, error
mapping and the bookkeeping of waiting. Each client only issues commands."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import redis.exceptions

from ._protocol import (
    DEFAULT_DEAD_STREAM,
    DEFAULT_GROUP,
    DEFAULT_RESULTS_STREAM,
    DEFAULT_TASKS_STREAM,
    DEFAULT_URL,
    DeadIndex,
    Keys,
    Outcome,
    decode_dead,
    decode_result,
    redact,
    text,
)
from .errors import PeagenConnectionError, ResultMissingError

#: HMGET / pipeline chunk size when waiting for many tasks.
CHUNK = 1000
#: First sleep between polls; doubles up to `poll_interval`.
MIN_POLL = 0.005


class _Settings:
    def __init__(
        self,
        url: Optional[str],
        tasks_stream: str,
        group: str,
        results_stream: str,
        dead_stream: str,
        poll_interval: float,
        redis_client: Any,
    ) -> None:
        if url is None:
            url = os.environ.get("PEAGEN_REDIS_URL") or DEFAULT_URL
        self.url = url
        self.keys = Keys(tasks_stream, group, results_stream, dead_stream)
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.poll_interval = poll_interval
        self.address = redact(url) if redis_client is None else _describe(redis_client)
        self._dead = DeadIndex()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Map redis-py's connection failures to PeagenConnectionError."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            # redis-py's messages name host:port, never the password; redact
            # anyway in case a URL ever shows up in one.
            msg = str(e).replace(self.url, self.address) if self.url else str(e)
            raise PeagenConnectionError(self.address, type(e)(msg)) from None


def _describe(client: Any) -> str:
    try:
        kw = client.connection_pool.connection_kwargs
    except AttributeError:
        return "<caller's Redis client>"
    if "path" in kw:
        return "unix://%s" % kw["path"]
    return "redis://%s:%s/%s" % (kw.get("host", "?"), kw.get("port", "?"), kw.get("db", 0))


def defaults() -> Dict[str, Any]:
    return {
        "tasks_stream": DEFAULT_TASKS_STREAM,
        "group": DEFAULT_GROUP,
        "results_stream": DEFAULT_RESULTS_STREAM,
        "dead_stream": DEFAULT_DEAD_STREAM,
    }


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Waiter:
    """One wait_all call: which ids still wait, and what each round found.

    A round is: (1) HMGET the result index for the waiting ids and read the
    dead stream after the last entry seen; (2) fetch the indexed results,
    and for ids only found in the dead stream re-check the index (the final
    error result is written in the same script as the dead letter, and is
    the richer record) and confirm the letter still exists (a dlq retry
    deletes it)."""

    def __init__(self, ids: Sequence[str], dead: DeadIndex, timeout: Optional[float]) -> None:
        self.order = list(ids)
        self.waiting: List[str] = list(dict.fromkeys(ids))
        self.done: Dict[str, Outcome] = {}
        self.dead = dead
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.delay = MIN_POLL

    def index_hits(self, rids: Sequence[Any]) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """Given HMGET replies for `self.waiting` (in order): ids to fetch
        from the results stream, and ids to check in the dead stream."""
        fetch: List[Tuple[str, str]] = []
        check: List[Tuple[str, str]] = []
        for tid, rid in zip(self.waiting, rids):
            if rid is not None:
                fetch.append((tid, text(rid)))
                continue
            did = self.dead.lookup(tid)
            if did is not None:
                check.append((tid, did))
        return fetch, check

    def take_result(self, tid: str, rid: str, page: Sequence[Any]) -> None:
        if not page:
            raise ResultMissingError(
                "the result index names results entry %s for task %s, but the results "
                "stream no longer holds it (trimmed?)" % (rid, tid)
            )
        self.done[tid] = decode_result(page[0])

    def take_dead(self, tid: str, did: str, rid: Any, page: Sequence[Any]) -> Optional[Tuple[str, str]]:
        """Returns (tid, rid) when the index now has a result to fetch."""
        if rid is not None:
            return tid, text(rid)
        if not page:
            self.dead.forget(tid, did)
            return None
        self.done[tid] = decode_dead(page[0])
        return None

    def finish_round(self) -> Optional[float]:
        """None when every id is done; else how long to sleep (raises
        PeagenTimeoutError when the time is up)."""
        before = len(self.waiting)
        self.waiting = [t for t in self.waiting if t not in self.done]
        if not self.waiting:
            return None
        if len(self.waiting) < before:
            self.delay = MIN_POLL
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            from .errors import PeagenTimeoutError

            raise PeagenTimeoutError(self.waiting, self.timeout, self.done)
        sleep = self.delay
        if self.deadline is not None:
            sleep = min(sleep, max(0.0, self.deadline - now))
        return sleep

    def next_delay(self, cap: float) -> None:
        self.delay = min(self.delay * 2, cap)

    def results(self) -> Dict[str, Outcome]:
        return {t: self.done[t] for t in self.order}


def group_ok(reply: Any) -> None:
    """An XGROUP CREATE reply from a pipeline: BUSYGROUP is fine."""
    if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
        raise reply


def check_replies(replies: Sequence[Any]) -> None:
    for r in replies:
        if isinstance(r, Exception):
            raise r


def dlq_summary(retried: Mapping[str, str], failed: Mapping[str, str]) -> Optional[str]:
    if not failed:
        return None
    return "%d dead letter(s) not retried: %s" % (
        len(failed),
        "; ".join(failed.values()),
    )
