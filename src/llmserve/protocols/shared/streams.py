"""Several engine streams read as one (a completions request with many prompts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")


async def merge_streams(streams: Sequence[AsyncIterable[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterables (GenerationStreams), yielding ``(stream_index, item)``
    as items arrive.

    Closing this generator (client gone, error) cancels and closes every stream, so each engine
    request is aborted at once.
    """
    sources = streams
    streams = [stream.__aiter__() for stream in sources]
    merged = _merge(streams)
    try:
        async for pair in merged:
            yield pair
    finally:
        await merged.aclose()
        for stream in (*streams, *sources):
            await _aclose(stream)


async def _merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    if len(streams) == 1:
        stream = streams[0]
        try:
            async for item in stream:
                yield 0, item
        finally:
            await _aclose(stream)
        return
    pending: dict[asyncio.Task, int] = {}
    try:
        for i, stream in enumerate(streams):
            pending[asyncio.ensure_future(_anext(stream))] = i
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                i = pending.pop(task)
                item = task.result()  # re-raises the stream's error
                if item is _END:
                    continue
                pending[asyncio.ensure_future(_anext(streams[i]))] = i
                yield i, item
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except BaseException:  # noqa: BLE001 - each stream's own cancellation/errors are done with
                pass
        for stream in streams:
            await _aclose(stream)


_END = object()


async def _anext(stream: AsyncIterator[T]) -> T | object:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


async def _aclose(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:  # "aclose(): asynchronous generator is already running" in odd races
            pass
