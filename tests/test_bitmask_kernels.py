"""The constraint bitmask applied to logits: xgrammar's CPU kernel, its Triton (CUDA) kernel and the
torch unpack must all mask exactly the same entries, for rows picked in any order.

The Triton kernel is run under Triton's interpreter on CPU tensors (in a fresh process, since the
interpreter must be switched on before triton is imported), with the two CUDA device properties
xgrammar reads supplied; on a machine with a GPU it also runs for real on CUDA tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llmserve.backends.torch import logits_masks

VOCAB = 49_157  # not a multiple of 32: the last word is partly padding


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.standard_normal((5, VOCAB), dtype=np.float32))
    words = (VOCAB + 31) // 32
    bitmask = rng.integers(-(2**31), 2**31 - 1, size=(3, words), dtype=np.int64).astype(np.int32)
    bitmask[1, :] = 0
    bitmask[1, 7] = np.int32(-(2**31))  # only token 7*32+31 allowed, through the sign bit
    items = [SimpleNamespace(bitmask_row=r) for r in (2, None, 0, 1, None)]
    return logits, items, [0, 2, 3], bitmask


def _reference(logits, items, rows, bitmask) -> torch.Tensor:
    out = logits.clone()
    for i in rows:
        words = bitmask[items[i].bitmask_row].astype(np.uint32)
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:VOCAB].astype(bool)
        out[i, ~torch.from_numpy(allowed)] = float("-inf")
    return out


def _masked(logits, items, rows, bitmask, *, unpack: bool) -> torch.Tensor:
    work = logits.clone()
    saved = set(logits_masks._BROKEN)
    if unpack:
        logits_masks._BROKEN.add(work.device.type)
    try:
        logits_masks.apply_token_bitmask(work, items, rows, bitmask)
    finally:
        logits_masks._BROKEN.clear()
        logits_masks._BROKEN.update(saved)
    return work


@pytest.mark.parametrize("unpack", [False, True], ids=["xgrammar-cpu", "torch-unpack"])
def test_cpu_paths_mask_the_same_entries(unpack):
    pytest.importorskip("xgrammar")
    logits, items, rows, bitmask = _case()
    got = _masked(logits, items, rows, bitmask, unpack=unpack)
    assert torch.equal(got, _reference(logits, items, rows, bitmask))
    assert torch.isfinite(got[3]).sum() == 1 and torch.isfinite(got[3, 7 * 32 + 31])
    assert torch.equal(got[[1, 4]], logits[[1, 4]])  # unconstrained rows untouched


def test_a_failing_kernel_falls_back_to_the_unpack(monkeypatch):
    logits, items, rows, bitmask = _case(1)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel here")

    monkeypatch.setattr(logits_masks, "_xgrammar_kernel", lambda work: broken)
    work = logits.clone()
    logits_masks.apply_token_bitmask(work, items, rows, bitmask)
    assert torch.equal(work, _reference(logits, items, rows, bitmask))
    logits_masks._BROKEN.discard("cpu")


TRITON_SCRIPT = """
import sys, types, torch
sys.path[:0] = {paths!r}
torch.cuda.get_device_properties = lambda *a: types.SimpleNamespace(
    multi_processor_count=4, gcnArchName="")
from xgrammar.kernels.apply_token_bitmask_inplace_triton import apply_token_bitmask_inplace_triton
from llmserve.backends.torch import logits_masks
import test_bitmask_kernels as t

def triton_kernel(logits, bitmask, *, vocab_size, indices):
    apply_token_bitmask_inplace_triton(logits, bitmask, vocab_size, indices)

logits_masks._xgrammar_kernel = lambda work: triton_kernel
logits, items, rows, bitmask = t._case(2)
got = t._masked(logits, items, rows, bitmask, unpack=False)
assert torch.equal(got, t._reference(logits, items, rows, bitmask)), "triton kernel differs"
print("ok")
"""


def test_xgrammar_triton_kernel_under_the_interpreter():
    pytest.importorskip("triton")
    pytest.importorskip("xgrammar")
    here = os.path.dirname(__file__)
    paths = [here, os.path.join(os.path.dirname(here), "src")]
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT.format(paths=paths)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kernel_masks_like_the_cpu(dtype):
    pytest.importorskip("xgrammar")
    logits, items, rows, bitmask = _case(3)
    logits = logits.to(dtype)
    cuda = logits.to("cuda")
    assert logits_masks._xgrammar_kernel(cuda) is not None
    got = _masked(cuda, items, rows, bitmask, unpack=False).cpu()
    assert torch.equal(got, _reference(logits, items, rows, bitmask))
    assert "cuda" not in logits_masks._BROKEN


def test_warm_up_runs_the_kernel_once():
    pytest.importorskip("xgrammar")
    logits_masks.warm_up_bitmask_kernel(VOCAB, "cpu", torch.float32)
    assert "cpu" not in logits_masks._BROKEN
