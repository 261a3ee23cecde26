"""One SQLite responses store shared by several servers (replicas behind a balancer): each reads
and deletes what the others stored, in both journal modes, from several processes at once."""

from __future__ import annotations

import multiprocessing

import pytest

from llmserve.config import build_config
from llmserve.errors import ConfigError
from llmserve.protocols.responses.store import ResponseNotFoundError, StoredResponse, open_store


def _record(i: int, writer: str) -> StoredResponse:
    return StoredResponse({"id": f"{writer}-{i}", "output": [{"type": "message"}]}, [{"id": f"in{i}"}], [])


def _write(url: str, writer: str, count: int) -> None:
    store = open_store(url, 1000)
    for i in range(count):
        store.put(_record(i, writer))
    store.close()


@pytest.mark.parametrize("query", ["", "?journal_mode=delete"])
def test_servers_read_each_others_responses(tmp_path, query):
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}{query}"
    build_config(responses_store=url)  # accepted by the flag
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_write, args=(url, name, 40)) for name in ("a", "b")]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(60)
        assert proc.exitcode == 0
    first, second = open_store(url, 1000), open_store(url, 1000)
    assert first.get("b-39").input == [{"id": "in39"}]
    assert second.get("a-0").conversation() == [{"id": "in0"}, {"type": "message"}]
    first.delete("a-5")
    with pytest.raises(ResponseNotFoundError):
        second.get("a-5")
    mode = first._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == ("delete" if query else "wal")
    first.close()
    second.close()


@pytest.mark.parametrize(
    "bad", ["sqlite:////tmp/x.sqlite?journal_mode=off", "sqlite:////tmp/x.sqlite?mode=ro"]
)
def test_unknown_store_options_are_refused(bad):
    with pytest.raises(ConfigError, match="--responses-store"):
        build_config(responses_store=bad)
