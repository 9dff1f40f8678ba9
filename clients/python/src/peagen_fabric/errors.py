"""Exceptions of the Peagen client. All derive from PeagenError."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence


class PeagenError(Exception):
    """Base class of every error this package raises."""


class PeagenConnectionError(PeagenError, ConnectionError):
    """Redis cannot be reached (or stopped answering). `address` is the
    Redis URL with any password replaced by `***`."""

    def __init__(self, address: str, cause: BaseException) -> None:
        self.address = address
        self.cause = cause
        super().__init__(
            "cannot talk to Redis at %s: %s (is redis-server running and reachable? "
            "check the client's url / PEAGEN_REDIS_URL)" % (address, cause)
        )


class InvalidTaskError(PeagenError, ValueError):
    """A task a worker would dead-letter as malformed/invalid; nothing was
    pushed."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        self.field = field
        super().__init__(message)


class PeagenTimeoutError(PeagenError, TimeoutError):
    """No outcome within the timeout. `pending` lists the task ids still
    without a result or dead letter; `done` holds those that finished."""

    def __init__(
        self, pending: Sequence[str], timeout: Optional[float], done: Optional[Dict[str, Any]] = None
    ) -> None:
        self.pending: List[str] = list(pending)
        self.done: Dict[str, Any] = dict(done or {})
        shown = ", ".join(self.pending[:5]) + (" ..." if len(self.pending) > 5 else "")
        super().__init__(
            "%d task(s) without a result after %ss: %s (is a peagen-worker consuming the "
            "stream? see `peagenctl queue stats`)" % (len(self.pending), timeout, shown)
        )


class ResultMissingError(PeagenError):
    """The result index names a results entry that is gone (the results
    stream was trimmed or the entry deleted)."""


class DlqRetryError(PeagenError):
    """A dead letter cannot be retried (missing, unparsable, no raw data,
    or its raw data is not a valid task)."""

    def __init__(self, message: str, retried: Optional[Dict[str, str]] = None,
                 failed: Optional[Dict[str, str]] = None) -> None:
        self.retried: Dict[str, str] = dict(retried or {})
        self.failed: Dict[str, str] = dict(failed or {})
        super().__init__(message)
