"""Protocol v1 records and their encoding: pure code shared by both clients.

Nothing here does I/O. The sync and asyncio clients issue the Redis commands
and hand the replies to these functions, so both speak exactly the same
wire format (docs/protocol.md in the peagen-fabric repository).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import InvalidTaskError, PeagenError

SCHEMA_V = 1
#: The one stream field that carries the JSON document.
DATA_FIELD = "data"

DEFAULT_URL = "redis://127.0.0.1:6379"
DEFAULT_TASKS_STREAM = "peagen.tasks"
DEFAULT_GROUP = "peagen"
DEFAULT_RESULTS_STREAM = "peagen.results"
DEFAULT_DEAD_STREAM = "peagen.dead"

#: Same text as the Rust `DLQ_RETRY_SCRIPT` (src/queue.rs): KEYS dead, tasks,
#: results index; ARGV dead entry id, task data, task id. Moves one dead letter
#: back atomically and forgets the task's final error result.
DLQ_RETRY_SCRIPT = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('HDEL', KEYS[3], ARGV[3])
return redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
"""


@dataclass(frozen=True)
class Keys:
    """Redis key names, as configured in peagen.toml's [redis] table."""

    tasks: str = DEFAULT_TASKS_STREAM
    group: str = DEFAULT_GROUP
    results: str = DEFAULT_RESULTS_STREAM
    dead: str = DEFAULT_DEAD_STREAM

    @property
    def results_index(self) -> str:
        return self.results + ".index"

    @property
    def delayed(self) -> str:
        return self.tasks + ".delayed"


def redact(url: str) -> str:
    """Hide credentials in a Redis URL (same rule as the Rust `redact`)."""
    s = url.find("://")
    at = url.rfind("@")
    if s >= 0 and at > s:
        return url[: s + 3] + "***@" + url[at + 1 :]
    return url


def text(v: Any) -> str:
    """A Redis reply value as text (bytes are decoded leniently)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def now_prototype() -> str:
    """UTC now in the prototype's `%Y-%m-%dT%H:%M:%SZ` form."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_task_id(kind: str) -> str:
    """`<first 3 chars of kind>-<16 hex>`, like `Task::new` in Rust."""
    prefix = kind[:3] or "task"
    return "%s-%s" % (prefix, uuid.uuid4().hex[:16])


def dumps(obj: Any) -> str:
    """Compact JSON, non-ASCII kept (what serde_json writes)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_HEX = re.compile(r"^[0-9a-f]+$")


def parse_rfc3339(s: str) -> Optional[_dt.datetime]:
    """Parse an RFC 3339 time (Python 3.9's fromisoformat rejects `Z`)."""
    m = _RFC3339.match(s)
    if not m:
        return None
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    try:
        if tz in ("Z", "z"):
            tzinfo = _dt.timezone.utc
        else:
            sign = 1 if tz[0] == "+" else -1
            tzinfo = _dt.timezone(
                sign * _dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
            )
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        return _dt.datetime(
            int(y), int(mo), int(d), int(h), int(mi), int(sec), micro, tzinfo=tzinfo
        )
    except ValueError:
        return None


def format_deadline(d: Union[str, _dt.datetime]) -> str:
    """A deadline as RFC 3339 UTC; naive datetimes are taken as UTC."""
    if isinstance(d, str):
        return d
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def valid_traceparent(s: str) -> bool:
    """W3C traceparent `00-<32 hex>-<16 hex>-<2 hex>`, lower case, trace id not all zero."""
    p = s.split("-")
    lens = (2, 32, 16, 2)
    return (
        len(p) == 4
        and all(len(x) == n and _HEX.match(x) is not None for x, n in zip(p, lens))
        and p[1] != "0" * 32
    )


def _is_int(v: Any) -> bool:
    # bool is an int subclass in Python but `true` is not an integer in JSON.
    return isinstance(v, int) and not isinstance(v, bool)


_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


def _split(cls: Any, d: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Known fields of dataclass `cls` and the rest (kept in `extra`)."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("wire", True)}
    names.discard("extra")
    known = {k: v for k, v in d.items() if k in names}
    extra = {k: v for k, v in d.items() if k not in names}
    return known, extra


def _to_dict(rec: Any, omit_none: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(rec):
        if f.name == "extra" or not f.metadata.get("wire", True):
            continue
        v = getattr(rec, f.name)
        if v is None and f.name in omit_none:
            continue
        out[f.name] = v
    for k, v in rec.extra.items():
        out.setdefault(k, v)
    return out


_LOCAL = {"wire": False}


@dataclass
class Task:
    """A task entry (protocol section 2). Unknown fields live in `extra` and
    are written back verbatim."""

    kind: str
    id: str
    payload: Dict[str, Any] = field(default_factory=dict)
    requires: List[str] = field(default_factory=list)
    attempts: int = 0
    created_at: str = ""
    schema_v: int = SCHEMA_V
    deadline: Optional[str] = None
    timeout_ms: Optional[int] = None
    max_attempts: Optional[int] = None
    trace_id: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _OPTIONAL = ("deadline", "timeout_ms", "max_attempts", "trace_id")

    @classmethod
    def new(
        cls,
        kind: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        id: Optional[str] = None,
        requires: Optional[Iterable[str]] = None,
        deadline: Optional[Union[str, _dt.datetime]] = None,
        timeout_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        trace_id: Optional[str] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> "Task":
        """A fresh task (attempts 0, created now, generated id unless given)."""
        return cls(
            kind=kind,
            id=id if id is not None else new_task_id(kind),
            payload=dict(payload) if payload is not None else {},
            requires=list(requires) if requires is not None else [],
            created_at=now_prototype(),
            deadline=format_deadline(deadline) if deadline is not None else None,
            timeout_ms=timeout_ms,
            max_attempts=max_attempts,
            trace_id=trace_id,
            extra=dict(extra) if extra else {},
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Task":
        """Load a task document without judging it (see `check`)."""
        known, extra = _split(cls, d)
        kw: Dict[str, Any] = {"kind": known.pop("kind", ""), "id": known.pop("id", "")}
        kw.update(known)
        if kw.get("payload") is None:
            kw["payload"] = {}
        if kw.get("requires") is None:
            kw["requires"] = []
        if kw.get("attempts") is None:
            kw["attempts"] = 0
        if kw.get("created_at") is None:
            kw["created_at"] = ""
        if kw.get("schema_v") is None:
            kw["schema_v"] = SCHEMA_V
        return cls(extra=extra, **kw)

    @classmethod
    def from_json(cls, s: Union[str, bytes]) -> "Task":
        try:
            d = json.loads(s)
        except ValueError as e:
            raise InvalidTaskError("not JSON: %s" % e) from e
        if not isinstance(d, dict):
            raise InvalidTaskError("a task must be a JSON object")
        return cls.from_dict(d)

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self, self._OPTIONAL)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def check(self) -> None:
        """Raise InvalidTaskError for what a worker would dead-letter as
        `malformed`/`invalid` (the same rules as `Task::parse` in Rust)."""

        def bad(f: str, msg: str) -> InvalidTaskError:
            return InvalidTaskError("task field %s: %s" % (f, msg), field=f)

        if not isinstance(self.kind, str) or not self.kind:
            raise bad("kind", "must be a non-empty string")
        if not isinstance(self.id, str):
            raise bad("id", "must be a string")
        if not 1 <= len(self.id.encode("utf-8")) <= 200:
            raise bad("id", "must be 1 to 200 characters")
        if "/" in self.id or "\0" in self.id or self.id in (".", ".."):
            raise bad("id", "must not contain '/' or NUL or be '.'/'..'")
        if not isinstance(self.payload, dict):
            raise bad("payload", "must be a JSON object")
        if not isinstance(self.requires, list) or not all(
            isinstance(r, str) for r in self.requires
        ):
            raise bad("requires", "must be a list of strings")
        if not _is_int(self.attempts) or not 0 <= self.attempts <= _U32_MAX:
            raise bad("attempts", "must be an integer >= 0")
        if not isinstance(self.created_at, str):
            raise bad("created_at", "must be a string")
        if not _is_int(self.schema_v) or self.schema_v != SCHEMA_V:
            raise bad(
                "schema_v",
                "version %r is not supported (protocol v%d)" % (self.schema_v, SCHEMA_V),
            )
        if self.deadline is not None and (
            not isinstance(self.deadline, str) or parse_rfc3339(self.deadline) is None
        ):
            raise bad("deadline", "must be an RFC 3339 time")
        if self.timeout_ms is not None and (
            not _is_int(self.timeout_ms) or not 0 <= self.timeout_ms <= _U64_MAX
        ):
            raise bad("timeout_ms", "must be an integer >= 0")
        if self.max_attempts is not None and (
            not _is_int(self.max_attempts) or not 1 <= self.max_attempts <= _U32_MAX
        ):
            raise bad("max_attempts", "must be an integer >= 1")
        if self.trace_id is not None and (
            not isinstance(self.trace_id, str) or not valid_traceparent(self.trace_id)
        ):
            raise bad("trace_id", "must be a W3C traceparent 00-<32 hex>-<16 hex>-<2 hex>")
        try:
            self.to_json()
        except (TypeError, ValueError) as e:
            raise bad("payload", "not JSON-serializable: %s" % e) from e


@dataclass
class Result:
    """A result record (protocol section 4). Prototype records (only
    task_id, status, data, created_at, attempts) load with defaults; fields
    this version does not know are kept in `extra`."""

    task_id: str
    status: str
    data: Any = field(default_factory=dict)
    created_at: str = ""
    attempts: int = 0
    retryable: bool = False
    kind: str = ""
    handler: str = ""
    handler_version: str = ""
    image_tag: str = ""
    worker_id: str = ""
    host: str = ""
    started_at: str = ""
    finished_at: str = ""
    trace_id: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    #: Entry id in the results stream (not part of the record).
    entry_id: Optional[str] = field(default=None, compare=False, metadata=_LOCAL)

    _OPTIONAL = ("trace_id",)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> Optional[str]:
        """The error message of an `error` record."""
        if self.status != "error":
            return None
        if isinstance(self.data, dict) and isinstance(self.data.get("msg"), str):
            return str(self.data["msg"])
        return dumps(self.data)

    @property
    def dead_letter_reason(self) -> Optional[str]:
        """Set when the task was dead-lettered (its final error record)."""
        if isinstance(self.data, dict):
            r = self.data.get("dead_letter_reason")
            return r if isinstance(r, str) else None
        return None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], entry_id: Optional[str] = None) -> "Result":
        known, extra = _split(cls, d)
        kw: Dict[str, Any] = {
            "task_id": known.pop("task_id", ""),
            "status": known.pop("status", ""),
        }
        kw.update({k: v for k, v in known.items() if v is not None or k == "trace_id"})
        return cls(extra=extra, entry_id=entry_id, **kw)

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self, self._OPTIONAL)


@dataclass
class DeadLetter:
    """A dead-letter record (protocol section 6); unknown fields in `extra`."""

    original_id: str = ""
    task_id: Optional[str] = None
    kind: Optional[str] = None
    reason: str = ""
    error: str = ""
    attempts: int = 0
    worker_id: str = ""
    host: str = ""
    dead_at: str = ""
    raw: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    #: Entry id in the dead-letter stream (`dead_id` in peagenctl's output).
    dead_id: Optional[str] = field(default=None, compare=False, metadata=_LOCAL)
    #: The entry's original `data` when the worker never carried it (`raw` is
    #: null for `too_large` / `field_not_utf8`): the dead entry's `orig.data`.
    orig_data: Optional[str] = field(default=None, compare=False, repr=False, metadata=_LOCAL)

    ok = False

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        dead_id: Optional[str] = None,
        orig_data: Optional[str] = None,
    ) -> "DeadLetter":
        known, extra = _split(cls, d)
        nullable = ("task_id", "kind", "raw")
        kw = {k: v for k, v in known.items() if v is not None or k in nullable}
        return cls(extra=extra, dead_id=dead_id, orig_data=orig_data, **kw)

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self, ())

    @property
    def is_prototype(self) -> bool:
        """A letter in the prototype's shape: the task document itself."""
        return (
            not self.original_id
            and not self.reason
            and isinstance(self.extra.get("id"), str)
            and "payload" in self.extra
        )

    @property
    def raw_task_id(self) -> Optional[str]:
        """Which task this letter is about: `task_id`, else the `id` inside
        `raw` (the worker could not parse the task, e.g. `too_large`), else
        the `id` of a prototype-shaped letter."""
        if self.task_id:
            return str(self.task_id)
        if self.is_prototype:
            return str(self.extra["id"])
        return task_id_of_raw(self.raw if self.raw is not None else self.orig_data)

    def task(self) -> Optional[Task]:
        """The original task, if `raw` (or a prototype letter) holds one."""
        if self.is_prototype:
            d = dict(self.extra, kind=self.kind, attempts=self.attempts)
            return Task.from_dict(d)
        raw = self.raw if self.raw is not None else self.orig_data
        if raw is None:
            return None
        try:
            return Task.from_json(raw)
        except InvalidTaskError:
            return None


def task_id_of_raw(raw: Optional[str]) -> Optional[str]:
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if isinstance(d, dict) and isinstance(d.get("id"), str):
        return str(d["id"])
    return None


#: What waiting for a task yields: its final result record, or its dead
#: letter when the worker rejected the entry before any result existed.
Outcome = Union[Result, DeadLetter]


@dataclass
class Stats:
    """Queue statistics (`peagenctl queue stats`)."""

    stream: str
    group: str
    #: XLEN of the tasks stream: unfinished tasks (backlog + in flight).
    length: int
    #: Delivered but not acknowledged (in flight).
    pending: int
    #: Never delivered to the group; None when Redis does not know.
    lag: Optional[int]
    #: Retries waiting out their backoff (not in `length`).
    delayed: int
    dead_letters: int
    results: int
    consumers: int


# --------------------------------------------------------------------------
# Decoding stream replies
# --------------------------------------------------------------------------

#: (entry id, fields) as redis-py returns it (bytes or str, fields may be None).
StreamEntry = Tuple[Any, Any]


def entry_data(fields: Optional[Mapping[Any, Any]]) -> Optional[str]:
    """The `data` field of a stream entry, as text."""
    for k, v in (fields or {}).items():
        if text(k) == DATA_FIELD:
            return text(v)
    return None


def entry_orig_data(fields: Optional[Mapping[Any, Any]]) -> Optional[str]:
    """A dead entry's `orig.data`: the original `data` the dead-letter script
    copied server-side when the worker never carried it."""
    for k, v in (fields or {}).items():
        if text(k) == "orig." + DATA_FIELD:
            return text(v)
    return None


def _load_object(s: Optional[str]) -> Optional[Dict[str, Any]]:
    if s is None:
        return None
    try:
        d = json.loads(s)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def decode_result(entry: StreamEntry) -> Result:
    eid, fields = entry
    s = entry_data(fields)
    d = _load_object(s)
    if d is None:
        raise PeagenError(
            "results entry %s is not a JSON object: %r" % (text(eid), (s or "")[:200])
        )
    return Result.from_dict(d, entry_id=text(eid))


def decode_dead(entry: StreamEntry) -> DeadLetter:
    """A dead letter; one this version cannot parse is kept, marked
    `unparsable` (as peagenctl does), rather than failing the listing."""
    eid, fields = entry
    s = entry_data(fields)
    d = _load_object(s)
    if d is None:
        return DeadLetter(extra={"unparsable": True, "text": s}, dead_id=text(eid))
    return DeadLetter.from_dict(d, dead_id=text(eid), orig_data=entry_orig_data(fields))


def export_line(dl: DeadLetter) -> str:
    """One line of `peagenctl queue dlq export`: the record plus `dead_id`."""
    d = dl.to_dict()
    d["dead_id"] = dl.dead_id
    return dumps(d)


def stream_start(cursor: Optional[str]) -> str:
    """XRANGE start after `cursor` (exclusive), or from the beginning."""
    return "-" if cursor is None else "(" + cursor


class DeadIndex:
    """Task id -> dead-letter entry ids, built incrementally from the dead
    stream (which has no index of its own). Each refresh reads only entries
    after the last one seen, so waiting does not rescan the stream."""

    PAGE = 1000

    def __init__(self) -> None:
        self.cursor: Optional[str] = None
        self._by_task: Dict[str, List[str]] = {}

    def ingest(self, page: Sequence[StreamEntry]) -> bool:
        """Add one XRANGE page; True when the page was full (read on)."""
        for eid, fields in page:
            did = text(eid)
            self.cursor = did
            d = _load_object(entry_data(fields))
            if d is None:
                continue
            tid = DeadLetter.from_dict(d, orig_data=entry_orig_data(fields)).raw_task_id
            if tid:
                self._by_task.setdefault(tid, []).append(did)
        return len(page) >= self.PAGE

    def lookup(self, task_id: str) -> Optional[str]:
        """The newest dead-letter id seen for `task_id`."""
        ids = self._by_task.get(task_id)
        return ids[-1] if ids else None

    def forget(self, task_id: str, dead_id: str) -> None:
        """`dead_id` is gone (retried or deleted)."""
        ids = self._by_task.get(task_id)
        if ids and dead_id in ids:
            ids.remove(dead_id)
            if not ids:
                del self._by_task[task_id]


def prepare_push(
    tasks: Iterable[Union[Task, Mapping[str, Any]]],
) -> List[Task]:
    """Validate every task before any is written; documents get an id and
    `created_at` when missing (like `peagenctl push --file`)."""
    out: List[Task] = []
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            if not isinstance(t, Mapping):
                raise InvalidTaskError("item %d: not a Task or a mapping" % i)
            d = dict(t)
            kind = d.get("kind")
            d.setdefault("id", new_task_id(kind if isinstance(kind, str) else ""))
            d.setdefault("created_at", now_prototype())
            t = Task.from_dict(d)
        try:
            t.check()
        except InvalidTaskError as e:
            raise InvalidTaskError("task %d (%r): %s" % (i, t.id, e), field=e.field) from e
        out.append(t)
    return out


def retry_document(dl: DeadLetter) -> Tuple[str, str]:
    """(task JSON with attempts reset to 0, task id) for `dlq_retry`; raises
    DlqRetryError when the letter cannot be retried (as peagenctl refuses)."""
    from .errors import DlqRetryError

    if dl.extra.get("unparsable"):
        raise DlqRetryError(
            "dead letter %s is not a record this version understands" % dl.dead_id
        )
    if dl.raw is None:
        raise DlqRetryError("dead letter %s has no original data to retry" % dl.dead_id)
    try:
        task = Task.from_json(dl.raw)
        task.check()
    except InvalidTaskError as e:
        raise DlqRetryError("dead letter %s cannot be retried: %s" % (dl.dead_id, e)) from e
    task.attempts = 0
    return task.to_json(), task.id


def build_stats(keys: Keys, replies: Sequence[Any]) -> Stats:
    """From the replies of XLEN tasks, ZCARD delayed, XLEN dead, XLEN results,
    XINFO GROUPS tasks (the last may be an exception: no stream yet)."""
    length, delayed, dead, results, groups = replies
    pending, lag, consumers = 0, length, 0
    if isinstance(groups, Exception):
        if "no such key" not in str(groups):
            raise groups
        groups = []
    for g in groups or []:
        g = {text(k): v for k, v in g.items()}
        if text(g.get("name")) != keys.group:
            continue
        pending = int(g.get("pending") or 0)
        consumers = int(g.get("consumers") or 0)
        raw_lag = g.get("lag")
        lag = int(raw_lag) if raw_lag is not None else None
    return Stats(
        stream=keys.tasks,
        group=keys.group,
        length=int(length),
        pending=pending,
        lag=lag,
        delayed=int(delayed),
        dead_letters=int(dead),
        results=int(results),
        consumers=consumers,
    )


def is_busygroup(e: BaseException) -> bool:
    return "BUSYGROUP" in str(e)
