"""Build a torch model without initialising it and copy a checkpoint into it.

Models declare how checkpoint names map to their parameters as data: ``STACKED_PARAMS`` maps a
checkpoint projection to (our fused projection, shard index) and ``shard_sizes`` gives each
fused projection's row counts, so q/k/v (or gate/up) load straight into one matmul weight.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from llmserve.arch.hf_config import ArchConfig
from llmserve.arch.registry import torch_model_class
from llmserve.sources.weights import WeightsNotFoundError, iter_weights


def load_model(
    model_dir: str | Path, cfg: ArchConfig, dtype: torch.dtype, device: torch.device, tp=None
) -> nn.Module:
    """The model class for ``cfg`` built on the meta device, then filled from ``model_dir``.

    With a ``tp`` group (tp_layers.TPGroup) of several ranks, the model is sharded first and
    each rank loads its slices."""
    cls = torch_model_class(cfg.architecture)
    with torch.device("meta"), _no_init():
        model = cls(cfg)
        if tp is not None and tp.world > 1:
            from llmserve.backends.torch.tp_layers import shard_model

            shard_model(model, tp)
    model = _materialize(model, device, dtype)
    model.load_weights(iter_weights(model_dir))
    return model.eval()


def _materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Uninitialised storage for a meta model's parameters and buffers, floating ones in ``dtype``.

    ``to_empty(device).to(dtype)`` would allocate float32 first, convert it, and run empty_like's
    Python reference for meta tensors: 0.7-1.1 s at a server's start against 5 ms."""

    def empty(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)

    return model._apply(empty)


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_",
    "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
)  # fmt: skip


_ORIGINAL = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
_building = [0]  # models being built now, in any thread
_lock = threading.Lock()


@contextmanager
def _no_init() -> Iterator[None]:
    """Skip torch.nn.init while a model is built: the checkpoint overwrites every parameter, and
    a meta tensor's ``normal_`` (nn.Embedding's init) alone imports torch._dynamo, 2 s at start.
    The functions come back when the last model being built (in any thread) is done."""
    with _lock:
        _building[0] += 1
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, _keep)
    try:
        yield
    finally:
        with _lock:
            _building[0] -= 1
            if not _building[0]:
                for name, fn in _ORIGINAL.items():
                    setattr(nn.init, name, fn)


def _keep(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


def load_checkpoint(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: dict[str, tuple[str, int]],
    shard_sizes: dict[str, tuple[int, ...]],
    skip: tuple[str, ...] = (),
    prefix: str = "",
) -> None:
    """Copy ``weights`` into ``model``'s parameters; every parameter must be filled exactly.

    Checkpoint names ending with a string in ``skip`` are ignored, and ``prefix`` (e.g. "bert.")
    is stripped. Tied parameters (shared tensors) must be left out of ``named_parameters``
    by the caller (tie after loading). A module with a ``load_tensor(name, tensor, shard)``
    method (the tensor-parallel layers) copies its own slice of each tensor.
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    needed = {name: len(shard_sizes.get(name.split(".")[-2], (0,))) for name in params}
    loaded: dict[str, int] = {}
    for name, tensor in weights:
        if name.endswith(skip):
            continue
        name = name.removeprefix(prefix)
        param_name, shard = name, None
        for proj, (fused, index) in stacked.items():
            if f".{proj}." in name:
                param_name, shard = name.replace(f".{proj}.", f".{fused}."), index
                break
        if param_name not in params:
            raise WeightsNotFoundError(f"unexpected checkpoint tensor {name!r}")
        owner, _, attr = param_name.rpartition(".")
        custom = getattr(modules.get(owner), "load_tensor", None)
        if custom is not None:
            custom(attr, tensor, shard)
            loaded[param_name] = loaded.get(param_name, 0) + 1
            continue
        dest = params[param_name].data
        if shard is not None:
            sizes = shard_sizes[param_name.split(".")[-2]]
            dest = dest.narrow(0, sum(sizes[:shard]), sizes[shard])
        if dest.shape != tensor.shape:
            raise WeightsNotFoundError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        loaded[param_name] = loaded.get(param_name, 0) + 1
    missing = sorted(name for name, count in needed.items() if loaded.get(name, 0) < count)
    if missing:
        raise WeightsNotFoundError(f"checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:5])}")
