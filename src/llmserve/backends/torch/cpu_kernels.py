"""A fused paged-attention decode kernel for CPUs, in C, built on first use.

Decode is bound by reading the KV cache. The pure-torch path gathers each sequence's blocks into
a padded copy and then runs SDPA over it, reading the cache twice and writing it once; this
kernel reads each K/V row once, straight from the paged cache, and is about 2-3x faster at large
batch. It is compiled with the system C compiler (once; cached under the llmserve cache
directory) and loaded with ctypes. It links against the OpenMP runtime torch already loaded, so
it shares torch's thread pool. Without a compiler, ``decode_kernel()`` returns None and callers
use the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float load_f32(const float *p, int64_t i) { return p[i]; }
static inline void store_f32(float *p, int64_t i, float v) { p[i] = v; }
static inline float load_bf16(const uint16_t *p, int64_t i) {
    union { uint32_t u; float f; } v; v.u = (uint32_t)p[i] << 16; return v.f;
}
static inline void store_bf16(uint16_t *p, int64_t i, float f) {
    union { uint32_t u; float f; } v; v.f = f;
    p[i] = (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);  /* round to nearest even */
}

/* q: [B, H, D] with row stride q_stride (elements between sequences); cache: [slots, 2, KVH, D];
   tables: [B, max_blocks]; ctx_lens: [B]; out: [B, H, D] contiguous. One work item per
   (sequence, kv head): its G = H / KVH query heads share every K/V row it loads. Two passes
   (scores, then weighted V), each reading the rows once, block by block. G * D <= MAX_GD. */
#define MAX_GD 4096
#define DEFINE_DECODE(NAME, T, LOAD, STORE, DIM)                                                   \
void NAME(const T *q, int64_t q_stride, const T *cache, const int64_t *tables,                     \
          const int64_t *ctx_lens, T *out, int64_t B, int64_t H, int64_t KVH, int64_t head_dim,   \
          int64_t block_size, int64_t max_blocks, float scale, int64_t window, int nthreads) {    \
    const int64_t D = DIM ? DIM : head_dim; /* a constant D lets the compiler unroll */            \
    const int64_t G = H / KVH, row = 2 * KVH * D;                                                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                            \
    for (int64_t work = 0; work < B * KVH; work++) {                                               \
        const int64_t b = work / KVH, h = work % KVH, ctx = ctx_lens[b];                           \
        const int64_t first = (window > 0 && ctx > window) ? ctx - window : 0;                     \
        const int64_t n = ctx - first;                                                             \
        float qf[MAX_GD], acc[MAX_GD], kv[MAX_GD / 4], maxs[64], sums[64];                         \
        float *restrict scores = malloc(sizeof(float) * G * n);                                    \
        const int64_t *table = tables + b * max_blocks;                                            \
        for (int64_t g = 0; g < G; g++) {                                                          \
            maxs[g] = -3.0e38f; sums[g] = 0.0f;                                                    \
            for (int64_t d = 0; d < D; d++) {                                                      \
                qf[g * D + d] = LOAD(q, b * q_stride + (h * G + g) * D + d) * scale;               \
                acc[g * D + d] = 0.0f;                                                             \
            }                                                                                      \
        }                                                                                          \
        for (int64_t t0 = first - first % block_size; t0 < ctx; t0 += block_size) {               \
            const T *restrict base = cache + table[t0 / block_size] * block_size * row + h * D;    \
            const int64_t lo = t0 < first ? first : t0;                                            \
            const int64_t hi = t0 + block_size < ctx ? t0 + block_size : ctx;                      \
            for (int64_t t = lo; t < hi; t++) {                                                    \
                const T *restrict k = base + (t - t0) * row;                                       \
                for (int64_t d = 0; d < D; d++) kv[d] = LOAD(k, d);                                \
                for (int64_t g = 0; g < G; g++) {                                                  \
                    float s = 0.0f;                                                                \
                    for (int64_t d = 0; d < D; d++) s += qf[g * D + d] * kv[d];                    \
                    scores[g * n + (t - first)] = s;                                               \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int64_t g = 0; g < G; g++) {                                                          \
            float *restrict sg = scores + g * n;                                                   \
            float m = -3.0e38f, total = 0.0f;                                                      \
            for (int64_t i = 0; i < n; i++) m = sg[i] > m ? sg[i] : m;                             \
            for (int64_t i = 0; i < n; i++) { sg[i] = expf(sg[i] - m); total += sg[i]; }           \
            sums[g] = total;                                                                       \
        }                                                                                          \
        for (int64_t t0 = first - first % block_size; t0 < ctx; t0 += block_size) {               \
            const T *restrict base = cache + table[t0 / block_size] * block_size * row             \
                                     + KVH * D + h * D;                                            \
            const int64_t lo = t0 < first ? first : t0;                                            \
            const int64_t hi = t0 + block_size < ctx ? t0 + block_size : ctx;                      \
            for (int64_t t = lo; t < hi; t++) {                                                    \
                const T *restrict v = base + (t - t0) * row;                                       \
                for (int64_t d = 0; d < D; d++) kv[d] = LOAD(v, d);                                \
                for (int64_t g = 0; g < G; g++) {                                                  \
                    const float p = scores[g * n + (t - first)];                                   \
                    for (int64_t d = 0; d < D; d++) acc[g * D + d] += p * kv[d];                   \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int64_t g = 0; g < G; g++) {                                                          \
            const float inv = 1.0f / sums[g];                                                      \
            for (int64_t d = 0; d < D; d++) STORE(out, (b * H + h * G + g) * D + d, acc[g * D + d] * inv); \
        }                                                                                          \
        free(scores);                                                                              \
    }                                                                                              \
}

DEFINE_DECODE(decode_f32, float, load_f32, store_f32, 0)
DEFINE_DECODE(decode_bf16, uint16_t, load_bf16, store_bf16, 0)
DEFINE_DECODE(decode_f32_d64, float, load_f32, store_f32, 64)
DEFINE_DECODE(decode_bf16_d64, uint16_t, load_bf16, store_bf16, 64)
DEFINE_DECODE(decode_f32_d128, float, load_f32, store_f32, 128)
DEFINE_DECODE(decode_bf16_d128, uint16_t, load_bf16, store_bf16, 128)
"""

# -ffast-math lets the compiler vectorise the float reductions and expf (glibc libmvec).
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_MAX_GROUP, _MAX_GROUP_DIM = 64, 4096  # sizes of the kernel's stack buffers
_lock = threading.Lock()
_loaded: dict[str, object] = {}


def _cache_path() -> Path:
    root = os.environ.get("LLMSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmserve"
    )
    key = hashlib.sha256("\n".join([_SOURCE, *_FLAGS, platform.machine(), _cpu_model()]).encode()).hexdigest()
    return Path(root) / "kernels" / f"paged_decode_{key[:16]}.so"


def _cpu_model() -> str:
    # -march=native output is only valid on the CPU it was built for.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = Path(tmp) / "kernel.c", Path(tmp) / "kernel.so"
        src.write_text(_SOURCE)
        subprocess.run([compiler, *_FLAGS, str(src), "-o", str(lib), "-lm"], check=True, capture_output=True)
        os.replace(lib, target)  # atomic: concurrent builders never see a half-written library


def _library() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _loaded:
            _loaded["lib"] = None
            try:
                path = _cache_path()
                if not path.exists():
                    _build(path)
                lib = ctypes.CDLL(str(path))
                i64, ptr = ctypes.c_int64, ctypes.c_void_p
                for dtype, dim in _VARIANTS:
                    fn = getattr(lib, _variant_name(dtype, dim))
                    fn.restype = None
                    fn.argtypes = [ptr, i64, ptr, ptr, ptr, ptr] + [i64] * 6 + [ctypes.c_float, i64, ctypes.c_int]
                _loaded["lib"] = lib
            except (OSError, subprocess.CalledProcessError) as exc:
                log.info("fused CPU decode kernel unavailable (%s); using the torch path", exc)
        return _loaded["lib"]  # type: ignore[return-value]


_VARIANTS = [(dtype, dim) for dtype in ("f32", "bf16") for dim in (0, 64, 128)]


def _variant_name(dtype: str, dim: int) -> str:
    return f"decode_{dtype}" + (f"_d{dim}" if dim else "")


def decode_kernel(dtype: torch.dtype, device: torch.device, group: int, head_dim: int):
    """The C decode function for this dtype and head size, or None when it cannot be used here."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or group > _MAX_GROUP or group * head_dim > _MAX_GROUP_DIM or head_dim > 1024:
        return None
    lib = _library()
    if lib is None:
        return None
    name = "bf16" if dtype == torch.bfloat16 else "f32"
    return getattr(lib, _variant_name(name, head_dim if head_dim in (64, 128) else 0))


def paged_decode(
    fn,
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    tables: torch.Tensor,
    ctx_lens: torch.Tensor,
    max_blocks: int,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Decode attention with the C kernel ``fn``. ``q`` [B, H, D] may be a row-strided view
    (heads and head_dim contiguous); returns [B, H * D]."""
    num_seqs, heads, head_dim = q.shape
    if q.stride(2) != 1 or q.stride(1) != head_dim or not kv_cache.is_contiguous():
        raise ValueError("paged_decode needs contiguous heads in q and a contiguous cache")
    _, block_size, _, kv_heads, _ = kv_cache.shape
    out = torch.empty(num_seqs, heads * head_dim, dtype=q.dtype)
    fn(
        q.data_ptr(),
        q.stride(0),
        kv_cache.data_ptr(),
        tables.data_ptr(),
        ctx_lens.data_ptr(),
        out.data_ptr(),
        num_seqs,
        heads,
        kv_heads,
        head_dim,
        block_size,
        max_blocks,
        scale,
        window or 0,
        torch.get_num_threads(),
    )
    return out
