"""Token masks and batch logits processors on the torch sampler's working logits, in place.

Everything here runs only for steps that need it: the sampler calls these with the rows that
have a constraint bitmask, ``allowed_token_ids`` or an active processor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from llmserve.backends.base import BatchItem
from llmserve.engine.constraints import LogitsProcessor, LogitsRow

log = logging.getLogger("llmserve.torch")
_SHIFTS: dict[torch.device, torch.Tensor] = {}
_BROKEN: set[str] = set()  # device types whose xgrammar kernel failed once


def _mask_rows(work: torch.Tensor, rows: list[int], banned: torch.Tensor) -> None:
    if rows == list(range(work.shape[0])):
        work.masked_fill_(banned, float("-inf"))
    else:
        idx = torch.tensor(rows, dtype=torch.long, device=work.device)
        work[idx] = work[idx].masked_fill_(banned, float("-inf"))


def apply_token_bitmask(
    work: torch.Tensor, items: list[BatchItem], rows: list[int], bitmask: np.ndarray
) -> None:
    """-inf where row ``items[i].bitmask_row`` of the packed int32 bitmask has a 0 bit (bit j of
    word w: token 32w + j), for each i in ``rows``. xgrammar's kernel does it: its C++ loop on CPU
    (about a thousand times faster than unpacking with torch ops, measured), its Triton kernel on
    CUDA; elsewhere, or if that kernel fails, the bits are unpacked on the logits' device."""
    picks = [items[i].bitmask_row for i in rows]
    kernel = _xgrammar_kernel(work)
    if kernel is not None:
        aligned = np.full((work.shape[0], bitmask.shape[1]), -1, dtype=np.int32)  # row i masks work[i]
        aligned[rows] = bitmask[picks]
        words = torch.from_numpy(aligned)
        if work.device.type != "cpu":
            words = words.to(work.device)
        try:
            kernel(work, words, vocab_size=work.shape[1], indices=rows)
            return
        except Exception:  # e.g. Triton cannot build for this GPU: unpack from now on
            log.exception("xgrammar's bitmask kernel failed on %s; unpacking with torch", work.device)
            _BROKEN.add(work.device.type)
    words = bitmask if picks == list(range(len(bitmask))) else bitmask[picks]
    words = torch.from_numpy(np.ascontiguousarray(words, dtype=np.int32)).to(work.device)
    shifts = _SHIFTS.get(work.device)
    if shifts is None:
        shifts = _SHIFTS[work.device] = torch.arange(32, dtype=torch.int32, device=work.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # [rows, words, 32]
    _mask_rows(work, rows, (bits == 0).view(len(rows), -1)[:, : work.shape[1]])


def _xgrammar_kernel(work: torch.Tensor):
    """xgrammar's in-place bitmask kernel when it takes these logits: CPU (float32/bfloat16) or
    CUDA (any float dtype; xgrammar picks its Triton kernel there)."""
    device = work.device.type
    if device in _BROKEN or not work.is_contiguous():
        return None
    if not (device == "cuda" or (device == "cpu" and work.dtype in (torch.float32, torch.bfloat16))):
        return None
    try:
        from xgrammar import apply_token_bitmask_inplace
    except ImportError:
        return None
    return apply_token_bitmask_inplace


def warm_up_bitmask_kernel(vocab_size: int, device: str, dtype: torch.dtype) -> None:
    """Build xgrammar's kernel for these logits now (Triton compiles it at its first call on CUDA),
    so the first constrained request does not wait for it."""
    work = torch.zeros((1, vocab_size), dtype=dtype, device=device)
    words = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)
    apply_token_bitmask(work, [_Row(0)], [0], words)  # type: ignore[list-item]


class _Row:
    """The one field of a BatchItem the bitmask reads."""

    __slots__ = ("bitmask_row",)

    def __init__(self, row: int) -> None:
        self.bitmask_row = row


def apply_allowed_token_ids(work: torch.Tensor, items: list[BatchItem], rows: list[int]) -> None:
    """-inf outside each row's ``allowed_token_ids`` (out-of-vocabulary ids are ignored)."""
    vocab = work.shape[1]
    allowed = np.zeros((len(rows), vocab), dtype=bool)
    for j, i in enumerate(rows):
        ids = np.asarray(items[i].params.allowed_token_ids, dtype=np.int64)
        allowed[j, ids[(ids >= 0) & (ids < vocab)]] = True
    _mask_rows(work, rows, ~torch.from_numpy(allowed).to(work.device))


def processor_rows(
    processors: Sequence[LogitsProcessor], items: list[BatchItem], failed: dict[int, str]
) -> list[tuple[LogitsProcessor, list[LogitsRow]]]:
    """[(processor, its active rows)] for the processors active somewhere in the step; a row
    whose ``is_active`` raised goes to ``failed`` ({row: error}) instead."""
    out = []
    for proc in processors:
        rows = []
        for i, item in enumerate(items):
            try:
                active = proc.is_active(item.params)
            except Exception as exc:
                failed[i] = _failure(proc, exc)
                continue
            if active:
                rows.append(
                    LogitsRow(i, item.seq_id, item.params, item.prompt_token_ids, item.output_token_ids)
                )
        if rows:
            out.append((proc, rows))
    return out


def run_processors(
    work: torch.Tensor, active: list[tuple[LogitsProcessor, list[LogitsRow]]], failed: dict[int, str]
) -> None:
    """Each processor on its rows; one that raises fails those rows, never the step."""
    for proc, rows in active:
        try:
            proc.apply(work, rows)
        except Exception as exc:
            error = _failure(proc, exc)
            for r in rows:
                failed[r.index] = error


def _failure(proc: LogitsProcessor, exc: Exception) -> str:
    log.error("logits processor %s failed", type(proc).__name__, exc_info=exc)
    return f"logits processor {type(proc).__name__} failed: {exc}"
