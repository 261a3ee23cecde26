"""Fused CPU kernels in C (paged decode attention, add+RMSNorm, SiLU*mul, rotary), built on first use.

Why: on a CPU, decode is bound by reading the KV cache and by per-op overhead. The torch path
gathers each sequence's blocks into a padded copy and runs SDPA over it (reading the cache twice,
writing it once); ``paged_decode`` reads each K/V row once, straight from the paged cache. torch's
RMSNorm and rotary are chains of 5-8 small ops each; here they are one call.

The source (csrc/cpu_kernels.c, shipped as package data) is compiled once with the system C
compiler, cached under the llmserve cache directory (keyed by the source, flags and CPU), and
loaded with ctypes. It links against the OpenMP runtime torch already loaded, so it shares
torch's thread pool. Without a compiler ``CpuKernels.load`` returns None and the model runs on
``TorchOps`` alone.
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
from importlib import resources
from pathlib import Path

import torch

from llmserve.backends.torch.layers import TorchOps

log = logging.getLogger(__name__)

_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_MAX_GROUP, _MAX_HEAD_DIM = 64, 1024  # sizes of the decode kernel's stack buffers
_DTYPES = (torch.float32, torch.bfloat16)
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def _source(name: str = "cpu_kernels.c") -> str:
    return resources.files(__package__).joinpath("csrc").joinpath(name).read_text(encoding="utf-8")


def _cache_path(source: str, stem: str = "cpu_kernels") -> Path:
    """Where the library built from ``source`` is cached: the key covers the source itself, so
    an edited kernel file is rebuilt rather than loaded stale."""
    root = os.environ.get("LLMSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmserve"
    )
    key = hashlib.sha256("\n".join([source, *_FLAGS, platform.machine(), _cpu_flags()]).encode()).hexdigest()
    return Path(root) / "kernels" / f"{stem}_{key[:16]}.so"


def _cpu_flags() -> str:
    # -march=native output is only valid on CPUs with the same instruction sets.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path, source: str) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler found")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
        src.write_text(source)
        subprocess.run(
            [compiler, *_FLAGS, str(src), "-o", str(lib), "-lm"], check=True, capture_output=True, text=True
        )
        os.replace(lib, target)  # atomic: concurrent builders never see a half-written library


def _library() -> ctypes.CDLL | None:
    return load_library("cpu_kernels.c", _declare)


def load_library(name: str, declare) -> ctypes.CDLL | None:
    """The C library built from ``csrc/<name>`` (compiled once, cached), its functions typed by
    ``declare(lib)``; None without a working compiler."""
    with _lock:
        if name not in _loaded:
            _loaded[name] = None
            try:
                source = _source(name)
                path = _cache_path(source, name.removesuffix(".c"))
                if not path.exists():
                    _build(path, source)
                lib = ctypes.CDLL(str(path))
                declare(lib)
                _loaded[name] = lib
            except subprocess.CalledProcessError as exc:
                log.warning("building %s failed: %s", name, exc.stderr[-2000:])
            except OSError as exc:
                log.info("CPU kernels of %s unavailable (%s)", name, exc)
        return _loaded[name]


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, f32, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    signatures = {
        "paged_decode": [ptr, i64, ptr, ptr, ptr, ptr] + [i64] * 6 + [f32, i64, c_int, c_int],
        "add_rms_norm": [ptr, ptr, ptr, ptr, i64, i64, f32, c_int, c_int],
        "silu_mul": [ptr, ptr, i64, i64, c_int, c_int],
        "rope": [ptr, i64, i64, i64, i64, ptr, ptr, c_int, c_int],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = None, args


class CpuKernels(TorchOps):
    """TorchOps with the hot ops replaced by the C kernels for contiguous bf16/fp32 CPU tensors.

    Anything the kernels do not cover (other dtypes, strided inputs) falls back to torch.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    @classmethod
    def load(cls, dtype: torch.dtype, device: torch.device) -> CpuKernels | None:
        """The kernels for this run dtype and device, or None where they cannot be used."""
        if device.type != "cpu" or dtype not in _DTYPES:
            return None
        lib = _library()
        return cls(lib) if lib is not None else None

    def supports_decode(self, heads: int, kv_heads: int, head_dim: int) -> bool:
        return heads // kv_heads <= _MAX_GROUP and head_dim <= _MAX_HEAD_DIM

    def _ok(self, *tensors: torch.Tensor) -> bool:
        return all(t.is_contiguous() and t.dtype in _DTYPES and t.dtype == tensors[0].dtype for t in tensors)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not self._ok(x, weight):
            return super().rms_norm(x, weight, eps)
        out = torch.empty_like(x)
        rows = x.numel() // x.shape[-1]
        self.lib.add_rms_norm(
            None, x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, x.shape[-1], eps, *self._mode(x)
        )
        return out

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual += x`` in place; returns (rms_norm(residual) * weight, residual)."""
        if not self._ok(x, residual, weight):
            return super().add_rms_norm(x, residual, weight, eps)
        out = torch.empty_like(x)
        rows = x.numel() // x.shape[-1]
        self.lib.add_rms_norm(
            x.data_ptr(),
            residual.data_ptr(),
            weight.data_ptr(),
            out.data_ptr(),
            rows,
            x.shape[-1],
            eps,
            *self._mode(x),
        )
        return out, residual

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if not self._ok(gate_up):
            return super().silu_mul(gate_up)
        rows, width = gate_up.shape
        out = torch.empty(rows, width // 2, dtype=gate_up.dtype)
        self.lib.silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, width // 2, *self._mode(gate_up))
        return out

    def rope_tables(self, angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return angles.cos().contiguous(), angles.sin().contiguous()  # float32 [tokens, head_dim / 2]

    def rope_(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> None:
        tokens, heads, head_dim = x.shape
        if x.stride(2) != 1 or x.stride(1) != head_dim or x.dtype not in _DTYPES:
            raise ValueError("rope_ needs [tokens, heads, head_dim] with contiguous heads")
        cos, sin = tables
        self.lib.rope(
            x.data_ptr(), tokens, x.stride(0), heads, head_dim, cos.data_ptr(), sin.data_ptr(), *self._mode(x)
        )

    def paged_decode(self, q: torch.Tensor, kv_cache: torch.Tensor, group, scale: float) -> torch.Tensor:
        """Decode attention straight from the paged cache. ``q`` [B, H, D] may be a row-strided
        view (heads and head_dim contiguous). Returns [B, H * D]."""
        num_seqs, heads, head_dim = q.shape
        if (
            q.stride(2) != 1
            or q.stride(1) != head_dim
            or not kv_cache.is_contiguous()
            or q.dtype != kv_cache.dtype
        ):
            raise ValueError("paged_decode needs contiguous heads in q and a contiguous cache of q's dtype")
        _, block_size, _, kv_heads, _ = kv_cache.shape
        out = torch.empty(num_seqs, heads * head_dim, dtype=q.dtype)
        self.lib.paged_decode(
            q.data_ptr(),
            q.stride(0),
            kv_cache.data_ptr(),
            group.block_ids.data_ptr(),
            group.context_lens.data_ptr(),
            out.data_ptr(),
            num_seqs,
            heads,
            kv_heads,
            head_dim,
            block_size,
            group.max_blocks,
            scale,
            group.window or 0,
            *self._mode(q),
        )
        return out

    @staticmethod
    def _mode(x: torch.Tensor) -> tuple[int, int]:
        return int(x.dtype == torch.bfloat16), torch.get_num_threads()
