"""Stage ``tuning``: kernel variants timed on Llama-3-8B shapes (32 heads, 8 KV heads, head_dim 128,
block size 16, bf16; the whole cache read per decode step), for docs/PERFORMANCE.md's tuning item: decode TILE 32/64/128 and the split
count (half, the default, double), prefill BLOCK_M x BLOCK_N and num_stages 2/3, RMSNorm num_warps
at hidden 4096/8192. Every variant's output is also compared with the default's (a tile that is
fast but wrong must not win). Times are medians of triton.testing.do_bench (CUDA events).
"""

from __future__ import annotations

import time

import torch

LLAMA_8B = (32, 8, 128)  # heads, KV heads, head_dim
BLOCK = 16


def _time_ms(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median"))
    start = time.perf_counter()  # the dry run: one call in the interpreter
    fn()
    return (time.perf_counter() - start) * 1000


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)


def _cache(tokens: int, dtype, device, kv_heads, head_dim):
    blocks = -(-tokens // BLOCK) + 1
    return torch.randn(blocks, BLOCK, 2, kv_heads, head_dim, dtype=dtype, device=device), blocks


def decode_variants(batch: int, ctx_len: int, dtype, device: str, tiles, shape=LLAMA_8B) -> dict:
    from llmserve.backends.torch.triton import paged_decode as pd

    HEADS, KV_HEADS, HEAD_DIM = shape  # noqa: N806
    torch.manual_seed(0)
    cache, _ = _cache(batch * ctx_len, dtype, device, KV_HEADS, HEAD_DIM)
    per = -(-ctx_len // BLOCK)
    tables = torch.arange(batch * per, device=device, dtype=torch.int32).view(batch, per)
    lens = torch.full((batch,), ctx_len, device=device, dtype=torch.long)
    q = torch.randn(batch, HEADS, HEAD_DIM, dtype=dtype, device=device)
    sms = pd._num_sms(q.device)
    kv_bytes = batch * ctx_len * 2 * KV_HEADS * HEAD_DIM * cache.element_size()

    def call(tile, splits):
        return pd.paged_decode(
            q, cache, tables, lens, HEAD_DIM**-0.5, max_blocks=per, tile=tile, splits=splits
        )

    ref = call(pd.TILE, None)
    rows, best = [], None
    for tile in tiles:
        auto = pd.decode_splits(batch, KV_HEADS, per * BLOCK, sms, tile)
        for splits in sorted({max(auto // 2, 1), auto, auto * 2}):
            _close(call(tile, splits), ref)
            ms = _time_ms(lambda t=tile, s=splits: call(t, s), device)
            row = {"tile": tile, "splits": splits, "default_splits": splits == auto, "us": round(ms * 1000, 1),
                   "kv_gb_s": round(kv_bytes / ms / 1e6, 1)}  # fmt: skip
            rows.append(row)
            best = row if best is None or row["us"] < best["us"] else best
    default = (
        next(r for r in rows if r["tile"] == pd.TILE and r["default_splits"]) if pd.TILE in tiles else None
    )
    return {"batch": batch, "context": ctx_len, "variants": rows, "best": best, "default": default}


def prefill_variants(seq_len: int, dtype, device: str, tiles, stages, shape=LLAMA_8B) -> dict:
    from llmserve.backends.torch.triton import prefill as pf

    HEADS, KV_HEADS, HEAD_DIM = shape  # noqa: N806
    torch.manual_seed(0)
    cache, blocks = _cache(seq_len, dtype, device, KV_HEADS, HEAD_DIM)
    tables = torch.arange(blocks - 1, device=device, dtype=torch.int32).view(1, -1)
    q = torch.randn(seq_len, HEADS, HEAD_DIM, dtype=dtype, device=device)
    starts = torch.tensor([0, seq_len], device=device)
    lens = torch.tensor([seq_len], device=device)
    flops = 4 * HEADS * HEAD_DIM * seq_len * seq_len / 2  # causal: half of QK^T and PV

    def call(bm, bn, ns):
        return pf.prefill_attention(q, cache, tables, starts, lens, HEAD_DIM**-0.5, max_query=seq_len,
                                    max_blocks=tables.shape[1], block_m=bm, block_n=bn, num_stages=ns)  # fmt: skip

    ref = call(pf.BLOCK_M, pf.BLOCK_N, 2)
    rows = []
    for bm, bn in tiles:
        for ns in stages:
            try:
                _close(call(bm, bn, ns), ref)
                ms = _time_ms(lambda a=bm, b=bn, c=ns: call(a, b, c), device)
            except Exception as exc:  # e.g. out of shared memory for this tile: say so, go on
                rows.append(
                    {
                        "block_m": bm,
                        "block_n": bn,
                        "num_stages": ns,
                        "error": f"{type(exc).__name__}: {exc}"[:300],
                    }
                )
                continue
            rows.append({"block_m": bm, "block_n": bn, "num_stages": ns, "us": round(ms * 1000, 1),
                         "tflop_s": round(flops / ms / 1e9, 1)})  # fmt: skip
    timed = [r for r in rows if "us" in r]
    return {"tokens": seq_len, "variants": rows, "best": min(timed, key=lambda r: r["us"]) if timed else None}


def rms_norm_variants(rows_n: int, hidden: int, dtype, device: str, warps) -> dict:
    from llmserve.backends.torch.triton import rms_norm as rn

    torch.manual_seed(0)
    x = torch.randn(rows_n, hidden, dtype=dtype, device=device)
    res = torch.randn(rows_n, hidden, dtype=dtype, device=device)
    w = torch.randn(hidden, dtype=dtype, device=device)
    ref = rn.rms_norm(x, w, 1e-6, res.clone())
    scratch = res.clone()  # timing runs add into it again and again
    moved = 5 * rows_n * hidden * x.element_size()  # read x, res, (w); write res, out
    out = []
    for nw in warps:
        _close(rn.rms_norm(x, w, 1e-6, res.clone(), num_warps=nw), ref)
        ms = _time_ms(lambda n=nw: rn.rms_norm(x, w, 1e-6, scratch, num_warps=n), device)
        out.append({"num_warps": nw, "us": round(ms * 1000, 2), "gb_s": round(moved / ms / 1e6, 1)})
    default = min(max(hidden // 256, 1), 16)
    return {"rows": rows_n, "hidden": hidden, "default_warps": default, "variants": out,
            "best": min(out, key=lambda r: r["us"])}  # fmt: skip


def stage_tuning(ctx) -> None:
    device, shape = ctx.device, LLAMA_8B
    if ctx.quick:  # the dry run: one small shape per kernel, fp32 under the interpreter
        dtype, decode_shapes, tiles, prefill_lens, shape = torch.float32, [(1, 40)], [16], [20], (2, 1, 16)
        ptiles, stages, norm_shapes, warps = [(16, 16)], [2], [(2, 64)], [1, 2]
    else:
        dtype, decode_shapes, tiles, prefill_lens = (
            torch.bfloat16,
            [(1, 4096), (64, 1024), (64, 4096)],
            [32, 64, 128],
            [2048, 8192],
        )
        ptiles, stages = [(64, 64), (128, 64), (64, 128), (128, 128)], [2, 3]
        norm_shapes, warps = [(1, 4096), (64, 4096), (4096, 4096), (64, 8192), (4096, 8192)], [4, 8, 16]  # fmt: skip
    for batch, ctx_len in decode_shapes:
        ctx.check(
            f"decode-b{batch}-ctx{ctx_len}", decode_variants, batch, ctx_len, dtype, device, tiles, shape
        )
    for rows_n, hidden in norm_shapes:
        ctx.check(f"rms-norm-rows{rows_n}-h{hidden}", rms_norm_variants, rows_n, hidden, dtype, device, warps)
    for n in prefill_lens:
        if ctx.time_left() > 20:
            ctx.check(f"prefill-{n}", prefill_variants, n, dtype, device, ptiles, stages, shape)
