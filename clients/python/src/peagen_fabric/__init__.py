"""Producer client for the Peagen task fabric: push tasks onto Redis Streams
and await their results (protocol v1, docs/protocol.md).

    from peagen_fabric import Client
    c = Client("redis://127.0.0.1:6379")
    tid = c.push("echo", {"hello": "world"})
    print(c.wait_result(tid, timeout=30).data)
"""

from __future__ import annotations

from ._protocol import (
    SCHEMA_V,
    DeadLetter,
    Keys,
    Outcome,
    Result,
    Stats,
    Task,
    redact,
)
from .aio import AsyncClient
from .client import Client
from .errors import (
    DlqRetryError,
    InvalidTaskError,
    PeagenConnectionError,
    PeagenError,
    PeagenTimeoutError,
    ResultMissingError,
)

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_V",
    "AsyncClient",
    "Client",
    "DeadLetter",
    "DlqRetryError",
    "InvalidTaskError",
    "Keys",
    "Outcome",
    "PeagenConnectionError",
    "PeagenError",
    "PeagenTimeoutError",
    "Result",
    "ResultMissingError",
    "Stats",
    "Task",
    "redact",
]
