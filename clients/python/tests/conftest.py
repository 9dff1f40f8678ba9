"""Test support: a real redis-server and real peagen-worker processes.

- Redis: $PEAGEN_TEST_REDIS_URL (run-tests.sh starts one), else a private
  redis-server on a free loopback port started here.
- Workers: $PEAGEN_WORKER_BIN (run-tests.sh sets it), configured like the
  Rust tests configure theirs (tests/foundation.rs): a TOML file plus
  PEAGEN_REDIS_URL / PEAGEN_WORKER_ID in the environment.
- peagenctl: $PEAGENCTL_BIN, else next to the worker binary (throughput row).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional

import pytest
import redis

from peagen_fabric import AsyncClient, Client

#: Rows for the throughput table printed at the end of the session.
THROUGHPUT: List[Dict[str, Any]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(what: str, cond: Callable[[], Any], timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for: " + what)
        time.sleep(0.02)


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="peagen-pytest-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(scratch: Path) -> Iterator[str]:
    url = os.environ.get("PEAGEN_TEST_REDIS_URL")
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server not found: install it or set PEAGEN_TEST_REDIS_URL")
    port = free_port()
    d = scratch / "redis"
    d.mkdir()
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = "redis://127.0.0.1:%d/0" % port
    r = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(r.ping())
        except redis.ConnectionError:
            return False

    try:
        eventually("redis-server to answer", up, 10)
        yield url
    finally:
        r.close()
        p.terminate()
        p.wait(10)


@pytest.fixture(scope="session")
def worker_bin() -> str:
    b = os.environ.get("PEAGEN_WORKER_BIN")
    if not b:
        pytest.fail("set PEAGEN_WORKER_BIN to a built peagen-worker (run-tests.sh does)")
    if not os.access(b, os.X_OK):
        pytest.fail("PEAGEN_WORKER_BIN=%s is not executable" % b)
    return b


@pytest.fixture(scope="session")
def peagenctl_bin(worker_bin: str) -> Optional[str]:
    b = os.environ.get("PEAGENCTL_BIN") or str(Path(worker_bin).with_name("peagenctl"))
    return b if os.access(b, os.X_OK) else None


class Worker:
    """One peagen-worker process; its log is kept for failure messages."""

    def __init__(self, bin: str, config: Path, url: str, wid: str, log: Path) -> None:
        self.wid = wid
        self.log = log
        env = dict(os.environ)
        env.update(
            PEAGEN_REDIS_URL=url,
            PEAGEN_WORKER_ID=wid,
            RUST_LOG="info",
            PEAGEN_LOG_FORMAT="text",
        )
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [bin, "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=f
            )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_worker(
    bin: str, url: str, d: Path, wid: str, body: str, stream: str, group: str
) -> Worker:
    cfg = d / ("%s.toml" % wid)
    cfg.write_text(body)
    w = Worker(bin, cfg, url, wid, d / ("%s.log" % wid))
    r = redis.Redis.from_url(url)

    def consuming() -> bool:
        if w.proc.poll() is not None:
            raise AssertionError("peagen-worker exited with %s:\n%s" % (w.proc.returncode, w.log_tail()))
        try:
            cs = r.xinfo_consumers(stream, group)
        except redis.ResponseError:
            return False
        return any(c["name"] in (wid, wid.encode()) for c in cs)

    try:
        eventually("worker %s to read %s" % (wid, stream), consuming, 30)
    except BaseException:
        w.stop()
        raise
    finally:
        r.close()
    return w


WORKER_CONFIG = """\
[redis]
block-ms = 200
{redis_extra}
[worker]
idle-exit-secs = 0
max-uptime-secs = 0
max-payload-bytes = 65536
drain-timeout-ms = 5000
{worker_extra}
[[handlers.command]]
kind = "flaky"
program = "{dir}/flaky.sh"

[[handlers.command]]
kind = "fixable"
program = "{dir}/fixable.sh"
"""

#: Fails retryably (exit 75) on attempts 1 and 2, then returns its attempt
#: number and the task document the worker handed it (with unknown fields).
FLAKY = """#!/bin/sh
task=$(cat)
if [ "$PEAGEN_TASK_ATTEMPT" -lt 3 ]; then echo "LLM 503 (attempt $PEAGEN_TASK_ATTEMPT)" >&2; exit 75; fi
printf '{"attempt":%s,"task":%s}\\n' "$PEAGEN_TASK_ATTEMPT" "$task"
"""

#: Fails for good (exit 1) until the file <marks>/<task id> exists.
FIXABLE = """#!/bin/sh
cat >/dev/null
if [ -e "{marks}/$PEAGEN_TASK_ID" ]; then echo '{{"fixed":true,"attempt":'"$PEAGEN_TASK_ATTEMPT"'}}'; exit 0; fi
echo "broken input" >&2
exit 1
"""


class Fleet:
    def __init__(self, dir: Path, marks: Path, url: str, workers: List[Worker], config: Path) -> None:
        self.dir = dir
        self.marks = marks
        self.url = url
        self.workers = workers
        self.config = config


def _fleet(
    scratch: Path, name: str, url: str, bin: str, redis_extra: str, worker_extra: str,
    stream: str, group: str,
) -> Iterator[Fleet]:
    d = scratch / name
    marks = d / "marks"
    marks.mkdir(parents=True)
    (d / "flaky.sh").write_text(FLAKY)
    (d / "fixable.sh").write_text(FIXABLE.format(marks=marks))
    for s in ("flaky.sh", "fixable.sh"):
        (d / s).chmod(0o755)
    body = WORKER_CONFIG.format(dir=d, redis_extra=redis_extra, worker_extra=worker_extra)
    w = start_worker(bin, url, d, "py-%s-1" % name, body, stream, group)
    try:
        yield Fleet(d, marks, url, [w], d / ("py-%s-1.toml" % name))
    finally:
        w.stop()


@pytest.fixture(scope="session")
def fleet(scratch: Path, redis_url: str, worker_bin: str) -> Iterator[Fleet]:
    """A worker on the default keys, short retry backoff."""
    yield from _fleet(
        scratch, "main", redis_url, worker_bin, "",
        "retry-backoff-ms = 100\nretry-backoff-max-ms = 200", "peagen.tasks", "peagen",
    )


SLOW_KEYS = dict(
    tasks_stream="py.slow.tasks", group="slowg", results_stream="py.slow.results",
    dead_stream="py.slow.dead",
)


@pytest.fixture(scope="session")
def slow_fleet(scratch: Path, redis_url: str, worker_bin: str) -> Iterator[Fleet]:
    """A worker on other key names whose retries wait a minute in the
    delayed set (for stats and timeouts)."""
    yield from _fleet(
        scratch, "slow", redis_url, worker_bin,
        'tasks-stream = "py.slow.tasks"\ngroup = "slowg"\nresults-stream = "py.slow.results"\n'
        'dead-stream = "py.slow.dead"',
        "retry-backoff-ms = 60000\nretry-backoff-max-ms = 60000", "py.slow.tasks", "slowg",
    )


class _SyncAsAsync:
    """Awaitable facade over the sync Client, so one scenario (a coroutine)
    exercises both clients with the same code."""

    def __init__(self, c: Client) -> None:
        self._c = c
        self.sync = c

    def __getattr__(self, name: str) -> Any:
        v = getattr(self._c, name)
        if not callable(v):
            return v

        async def call(*a: Any, **kw: Any) -> Any:
            return v(*a, **kw)

        return call


@pytest.fixture(params=["sync", "async"])
def run(request: Any, redis_url: str) -> Callable[..., Any]:
    """run(scenario, **client_kwargs): build the client of this variant,
    await scenario(client), close it."""
    variant = request.param

    def go(scenario: Callable[[Any], Awaitable[Any]], url: Optional[str] = None, **kw: Any) -> Any:
        async def main() -> Any:
            if variant == "sync":
                c: Any = _SyncAsAsync(Client(url or redis_url, **kw))
            else:
                c = AsyncClient(url or redis_url, **kw)
            try:
                return await scenario(c)
            finally:
                await c.close()

        return asyncio.run(main())

    go.variant = variant  # type: ignore[attr-defined]
    return go


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not THROUGHPUT:
        return
    tr = terminalreporter
    tr.section("throughput: 1000 echo tasks, one peagen-worker (no timed assertion)")
    hdr = "%-34s %10s %12s %14s %12s" % ("producer", "push s", "push tasks/s", "push+await s", "tasks/s")
    tr.write_line(hdr)
    tr.write_line("-" * len(hdr))
    for r in THROUGHPUT:
        tr.write_line(
            "%-34s %10.3f %12.0f %14.3f %12.0f"
            % (r["producer"], r["push"], r["n"] / r["push"], r["total"], r["n"] / r["total"])
        )
