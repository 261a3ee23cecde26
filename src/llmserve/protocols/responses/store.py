"""Stored responses: what ``previous_response_id``, GET, DELETE and input_items read.

A record is the response object, the request's own input items, and the context the response
was generated from (earlier turns' items), so a continuation replays the whole exchange,
function calls and their outputs included. Both stores keep at most ``max_stored`` records and
drop the oldest first; the SQLite one survives a restart.

Several servers may share one SQLite file (replicas behind a balancer, each reading what the
others stored): on one host as it is (WAL journal), across hosts on a shared filesystem with
working POSIX locks as ``sqlite:///PATH?journal_mode=delete`` (WAL needs shared memory, so one
host only). Writers wait up to 30 s for each other's locks.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve.api import LLMServeError


class ResponseNotFoundError(LLMServeError):
    """An id no stored response has (404, OpenAI's shape)."""

    status = 404
    type = "invalid_request_error"


@dataclass(slots=True)
class StoredResponse:
    """One response and the items it was generated from."""

    response: dict[str, Any]
    input: list[dict[str, Any]]  # this request's input items
    context: list[dict[str, Any]]  # earlier turns' items, before ``input``

    def conversation(self) -> list[dict[str, Any]]:
        """Every item a continuation starts from: context, input, then the output."""
        return [*self.context, *self.input, *self.response["output"]]


class MemoryStore:
    """An in-process LRU of at most ``max_stored`` responses."""

    def __init__(self, max_stored: int) -> None:
        self.max_stored = max_stored
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, record: StoredResponse) -> None:
        """Add or replace a record, dropping the oldest beyond the limit."""
        self._items[record.response["id"]] = record
        self._items.move_to_end(record.response["id"])
        while len(self._items) > self.max_stored:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse:
        """The record, or ResponseNotFoundError."""
        record = self._items.get(response_id)
        if record is None:
            raise _not_found(response_id)
        return record

    def delete(self, response_id: str) -> None:
        """Remove a record, or ResponseNotFoundError."""
        if self._items.pop(response_id, None) is None:
            raise _not_found(response_id)

    def close(self) -> None:
        """Nothing to release."""


class SQLiteStore:
    """Records in one SQLite table, the newest ``max_stored`` kept."""

    def __init__(self, path: str | Path, max_stored: int, journal_mode: str = "wal") -> None:
        self.max_stored = max_stored
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, used from the event loop's threads
        self._db = sqlite3.connect(str(Path(path).expanduser()), check_same_thread=False, timeout=30)
        self._db.execute(f"PRAGMA journal_mode={journal_mode}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "id TEXT UNIQUE NOT NULL, response TEXT NOT NULL, input TEXT NOT NULL, context TEXT NOT NULL)"
        )
        self._db.commit()

    def put(self, record: StoredResponse) -> None:
        """Add or replace a record, dropping the oldest beyond the limit."""
        row = (
            record.response["id"],
            *(json.dumps(x) for x in (record.response, record.input, record.context)),
        )
        with self._lock, self._db:
            self._db.execute("DELETE FROM responses WHERE id = ?", row[:1])
            self._db.execute("INSERT INTO responses (id, response, input, context) VALUES (?, ?, ?, ?)", row)
            self._db.execute(
                "DELETE FROM responses WHERE seq NOT IN (SELECT seq FROM responses ORDER BY seq DESC LIMIT ?)",
                (self.max_stored,),
            )

    def get(self, response_id: str) -> StoredResponse:
        """The record, or ResponseNotFoundError."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, input, context FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        if row is None:
            raise _not_found(response_id)
        return StoredResponse(*(json.loads(x) for x in row))

    def delete(self, response_id: str) -> None:
        """Remove a record, or ResponseNotFoundError."""
        with self._lock, self._db:
            gone = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount
        if not gone:
            raise _not_found(response_id)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


def open_store(url: str, max_stored: int) -> MemoryStore | SQLiteStore:
    """The store ``--responses-store`` names: ``memory`` or ``sqlite:///PATH[?journal_mode=MODE]``."""
    if url == "memory":
        return MemoryStore(max_stored)
    path, _, query = url.removeprefix("sqlite:///").partition("?")  # the Config checked the query
    return SQLiteStore(path, max_stored, query.partition("=")[2].lower() or "wal")


def current_store() -> MemoryStore | SQLiteStore:
    """The running app's store, opened on first use from its config."""
    from quart import current_app

    from llmserve.api import context

    store = current_app.extensions.get("llmserve.responses")
    if store is None:
        config = context().config
        store = current_app.extensions["llmserve.responses"] = open_store(
            config.responses_store_url, config.responses_max_stored
        )
    return store


def _not_found(response_id: str) -> ResponseNotFoundError:
    return ResponseNotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
