"""Stage ``kernels``: every Triton kernel compiled for the device against its plain-torch reference.

The cases are tests/triton_cases.py's (the ones tests/test_triton_kernels.py runs under the
interpreter), in fp16 and bf16 on a GPU, with the tests' small tiles and with the tiles the
backend really uses (decode TILE 64 and its own split count, prefill 64 x 64). Each case records
its largest absolute error against the float64 reference.
"""

from __future__ import annotations

import time

import torch
import triton_cases as cases


def stage_kernels(ctx) -> None:
    """In order of value, so a time box cut short still keeps the most useful part: bf16 on the
    backend's own tiles first, then the small ops, the long/batched decodes, fp16, and last the
    tests' small tiles. The summary is recorded after every case."""
    device = ctx.device
    dtypes = [torch.bfloat16, torch.float16] if device == "cuda" else [torch.float32]
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    heads = cases.HEADS if not ctx.quick else cases.HEADS[1:2]
    decode = list(zip(cases.DECODE_CASES, cases.DECODE_IDS, strict=True))
    prefill = list(zip(cases.PREFILL_CASES, cases.PREFILL_IDS, strict=True))
    if ctx.quick:
        decode, prefill = decode[1:2], prefill[:1]
    # The backend's own tiles on a GPU (decode tile 64 with its own split count; 64 x 64 query and
    # key tiles), then the tests' tile 16 (and their split counts).
    tiles = [64, 16] if device == "cuda" else [16]
    errors: dict[str, float] = {}
    start = time.monotonic()

    def run(key, fn, *args, **kwargs):
        err = ctx.check(key, fn, *args, device=device, **kwargs)
        if err is not None:
            errors[key] = err
        ctx.record("summary", {
            "cases": len(errors) + len(ctx.failed), "failed": len(ctx.failed),
            "seconds": round(time.monotonic() - start, 1),
            "max_abs_err": {names[d]: max((e for k, e in errors.items() if names[d] in k), default=None) for d in dtypes},
        })  # fmt: skip

    def attention(dtype, tile):
        for h, kv, d in heads:
            tag = f"{names[dtype]}-h{h}kv{kv}d{d}-tile{tile}"
            for (block_size, splits, window), case_id in decode:
                chosen = splits if tile == 16 else None  # None: decode_splits picks, as when serving
                run(f"decode-{case_id}-{tag}", cases.decode_case, dtype, h, kv, d, block_size, chosen, window,
                    tile=tile)  # fmt: skip
            for (block_size, window), case_id in prefill:
                run(f"prefill-{case_id}-{tag}", cases.prefill_case, dtype, h, kv, d, block_size, window,
                    block_m=tile, block_n=tile)  # fmt: skip

    def small_ops(dtype):
        tag = names[dtype]
        run(f"decode-strided-q-d80-{tag}", cases.strided_q_case, dtype=dtype)
        run(f"kv-write-{tag}", cases.kv_write_case, dtype)
        for hidden in (64, 96) if ctx.quick else (64, 96, 576, 4096):
            run(f"rms-norm-{hidden}-{tag}", cases.rms_norm_case, dtype, hidden)
        run(f"silu-mul-{tag}", cases.silu_mul_case, dtype)
        for head_dim in (64,) if ctx.quick else (64, 128, 80):
            run(f"rotary-d{head_dim}-{tag}", cases.rotary_case, dtype, head_dim)

    def long_decodes(dtype):
        # A long context at batch 1 (many splits), a batch of 24, and the other decode tiles.
        run(f"decode-long-{names[dtype]}-b1-4k", cases.decode_case, dtype, 32, 8, 128, 16, None, None,
            tile=64, lengths=[4000])  # fmt: skip
        run(f"decode-batch-{names[dtype]}-b24", cases.decode_case, dtype, 8, 2, 128, 16, None, None,
            tile=64, lengths=[(37 * i) % 700 + 1 for i in range(24)])  # fmt: skip
        for tile in (32, 128):
            run(f"decode-tile{tile}-{names[dtype]}", cases.decode_case, dtype, 8, 2, 128, 16, None, None,
                tile=tile)  # fmt: skip

    for dtype in dtypes:
        attention(dtype, tiles[0])
        small_ops(dtype)
        if device == "cuda":
            long_decodes(dtype)
    for tile in tiles[1:]:
        for dtype in dtypes:
            attention(dtype, tile)
