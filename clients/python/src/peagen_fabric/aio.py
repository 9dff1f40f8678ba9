"""asyncio client (redis.asyncio); the same surface as Client, every call awaited.

It mirrors client.py method for method: change both together (the tests
run every scenario against both)."""

from __future__ import annotations

import asyncio
from typing import IO, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import redis
import redis.asyncio

from ._core import CHUNK, Waiter, _Settings, check_replies, chunks, dlq_summary, group_ok
from ._protocol import (
    DATA_FIELD,
    DEFAULT_DEAD_STREAM,
    DEFAULT_GROUP,
    DEFAULT_RESULTS_STREAM,
    DEFAULT_TASKS_STREAM,
    DLQ_RETRY_SCRIPT,
    DeadIndex,
    DeadLetter,
    Outcome,
    Result,
    Stats,
    Task,
    build_stats,
    decode_dead,
    decode_result,
    export_line,
    prepare_push,
    retry_document,
    stream_start,
    text,
)
from .errors import DlqRetryError, ResultMissingError

TaskLike = Union[Task, Mapping[str, Any]]


class AsyncClient:
    """asyncio producer client for the Peagen task fabric (protocol v1).

    ``url`` defaults to ``$PEAGEN_REDIS_URL``, then ``redis://127.0.0.1:6379``.
    The stream names must match the workers' ``[redis]`` config. Pass
    ``redis_client`` to reuse an existing ``redis.asyncio.Redis``.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        tasks_stream: str = DEFAULT_TASKS_STREAM,
        group: str = DEFAULT_GROUP,
        results_stream: str = DEFAULT_RESULTS_STREAM,
        dead_stream: str = DEFAULT_DEAD_STREAM,
        poll_interval: float = 0.2,
        socket_timeout: float = 5.0,
        redis_client: Optional[redis.asyncio.Redis] = None,
    ) -> None:
        self._s = _Settings(
            url, tasks_stream, group, results_stream, dead_stream, poll_interval, redis_client
        )
        self.keys = self._s.keys
        # Close only a connection pool we made, never the caller's.
        self._owned = redis_client is None
        if redis_client is None:
            redis_client = redis.asyncio.Redis.from_url(
                self._s.url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        self.redis: redis.asyncio.Redis = redis_client
        self._dlq_retry = self.redis.register_script(DLQ_RETRY_SCRIPT)

    @property
    def address(self) -> str:
        """The Redis URL, password redacted."""
        return self._s.address

    async def close(self) -> None:
        if not self._owned:
            return
        aclose = getattr(self.redis, "aclose", None)  # redis-py >= 5.0.1
        if aclose is not None:
            await aclose()
        else:
            await self.redis.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def ping(self) -> None:
        with self._s._guard():
            await self.redis.ping()

    # -- producing ---------------------------------------------------------

    async def push(self, kind: str, payload: Optional[Mapping[str, Any]] = None, **opts: Any) -> str:
        """Push one task; returns its id. ``opts``: id, requires, deadline
        (str or datetime), timeout_ms, max_attempts, trace_id, extra."""
        return (await self.push_many([Task.new(kind, payload, **opts)]))[0]

    async def push_task(self, task: TaskLike) -> str:
        return (await self.push_many([task]))[0]

    async def push_many(self, tasks: Iterable[TaskLike]) -> List[str]:
        """Validate all, then push all in pipelined batches; returns the ids.
        The consumer group is created first (BUSYGROUP ignored) in the same
        round trip, so no task is written before the group exists."""
        ready = prepare_push(tasks)
        k = self.keys
        with self._s._guard():
            for batch in chunks(ready, CHUNK):
                p = self.redis.pipeline(transaction=False)
                p.xgroup_create(k.tasks, k.group, id="0", mkstream=True)
                for t in batch:
                    p.xadd(k.tasks, {DATA_FIELD: t.to_json()})
                replies = await p.execute(raise_on_error=False)
                group_ok(replies[0])
                check_replies(replies[1:])
        return [t.id for t in ready]

    # -- results -----------------------------------------------------------

    async def get_result(self, task_id: str) -> Optional[Result]:
        """The final result record, or None. Looks the task up in the result
        index (HGET), then reads that one entry (like `peagenctl task get`)."""
        k = self.keys
        with self._s._guard():
            rid = await self.redis.hget(k.results_index, task_id)
            if rid is None:
                return None
            page = await self.redis.xrange(k.results, text(rid), text(rid), count=1)
        if not page:
            raise ResultMissingError(
                "the result index names results entry %s for task %s, but the results "
                "stream no longer holds it (trimmed?)" % (text(rid), task_id)
            )
        return decode_result(page[0])

    async def wait_result(self, task_id: str, timeout: Optional[float] = 60.0) -> Outcome:
        """Wait for the task's final result, or for its dead letter when a
        worker rejected the entry before writing any result. Raises
        PeagenTimeoutError after ``timeout`` seconds (None: no limit)."""
        return (await self.wait_all([task_id], timeout))[task_id]

    async def wait_all(self, task_ids: Sequence[str], timeout: Optional[float] = 60.0) -> Dict[str, Outcome]:
        """Wait for every id; returns {id: Result or DeadLetter} in the
        order given. Polls the result index (HMGET) and only the new part of
        the dead stream, never the results stream."""
        w = Waiter(task_ids, self._s._dead, timeout)
        with self._s._guard():
            while True:
                await self._round(w)
                sleep = w.finish_round()
                if sleep is None:
                    return w.results()
                await asyncio.sleep(sleep)
                w.next_delay(self._s.poll_interval)

    async def _refresh_dead(self, first: Optional[List[Any]] = None) -> None:
        d = self._s._dead
        page: Any = first
        while True:
            if page is None:
                page = await self.redis.xrange(self.keys.dead, stream_start(d.cursor), "+", count=d.PAGE)
            if not d.ingest(page):
                return
            page = None

    async def _round(self, w: Waiter) -> None:
        k, d = self.keys, self._s._dead
        p = self.redis.pipeline(transaction=False)
        for c in chunks(w.waiting):
            p.hmget(k.results_index, list(c))
        p.xrange(k.dead, stream_start(d.cursor), "+", count=d.PAGE)
        replies = await p.execute()
        await self._refresh_dead(replies[-1])
        rids = [r for chunk in replies[:-1] for r in chunk]
        fetch, check = w.index_hits(rids)
        if check:
            p = self.redis.pipeline(transaction=False)
            for tid, did in check:
                p.hget(k.results_index, tid)
                p.xrange(k.dead, did, did, count=1)
            r = await p.execute()
            for i, (tid, did) in enumerate(check):
                more = w.take_dead(tid, did, r[2 * i], r[2 * i + 1])
                if more:
                    fetch.append(more)
        for c in chunks(fetch):
            p = self.redis.pipeline(transaction=False)
            for _, rid in c:
                p.xrange(k.results, rid, rid, count=1)
            for (tid, rid), page in zip(c, await p.execute()):
                w.take_result(tid, rid, page)

    # -- queue -------------------------------------------------------------

    async def stats(self) -> Stats:
        """Stream length, pending, lag, delayed retries, dead letters, results."""
        k = self.keys
        with self._s._guard():
            p = self.redis.pipeline(transaction=False)
            p.xlen(k.tasks)
            p.zcard(k.delayed)
            p.xlen(k.dead)
            p.xlen(k.results)
            p.xinfo_groups(k.tasks)
            return build_stats(k, await p.execute(raise_on_error=False))

    # -- dead letters ------------------------------------------------------

    async def dlq_list(self, limit: Optional[int] = 100) -> List[DeadLetter]:
        """Dead letters, oldest first (``limit`` None: all)."""
        out: List[DeadLetter] = []
        start = "-"
        with self._s._guard():
            while limit is None or len(out) < limit:
                n = 1000 if limit is None else min(1000, limit - len(out))
                page = await self.redis.xrange(self.keys.dead, start, "+", count=n)
                if not page:
                    break
                out.extend(decode_dead(e) for e in page)
                start = "(" + text(page[-1][0])
        return out

    async def dlq_export(self, out: IO[str]) -> int:
        """Write every dead letter as one JSON object per line (the record
        plus ``dead_id``, as `peagenctl queue dlq export`); returns the count."""
        items = await self.dlq_list(None)
        for dl in items:
            out.write(export_line(dl) + "\n")
        return len(items)

    async def dlq_retry(self, dead_ids: Iterable[str]) -> Dict[str, str]:
        """Move dead letters back to the tasks stream with attempts reset to 0
        (one atomic script each, the same as peagenctl's). Returns {dead id:
        new tasks entry id}; raises DlqRetryError naming those that could not
        be retried (after retrying the others)."""
        k = self.keys
        retried: Dict[str, str] = {}
        failed: Dict[str, str] = {}
        with self._s._guard():
            for did in dead_ids:
                page = await self.redis.xrange(k.dead, did, did, count=1)
                if not page:
                    failed[did] = "no dead letter with id %s" % did
                    continue
                try:
                    doc, tid = retry_document(decode_dead(page[0]))
                except DlqRetryError as e:
                    failed[did] = str(e)
                    continue
                try:
                    await self.redis.xgroup_create(k.tasks, k.group, id="0", mkstream=True)
                except redis.ResponseError as e:
                    group_ok(e)
                new = await self._dlq_retry(keys=[k.dead, k.tasks, k.results_index], args=[did, doc, tid])
                if new is None:
                    failed[did] = "dead letter %s vanished meanwhile" % did
                else:
                    retried[did] = text(new)
        msg = dlq_summary(retried, failed)
        if msg:
            raise DlqRetryError(msg, retried, failed)
        return retried

    async def dlq_retry_all(self) -> Dict[str, str]:
        return await self.dlq_retry([dl.dead_id for dl in await self.dlq_list(None) if dl.dead_id])
