"""Tensor parallelism over a 1-D device mesh (axis "tp") with jax.sharding.

Megatron-style layout, expressed as PartitionSpecs and left to XLA's SPMD partitioner:
q/k/v and gate/up are split by output columns (whole heads per device), o and down by input
rows (XLA inserts the all-reduce after them), the KV cache by KV heads, and the LM head by
vocabulary. When the heads do not divide evenly (SmolLM2: 9 query / 3 KV heads on 2 devices)
attention and its KV cache are replicated and only the MLP (and LM head) are split; when the
intermediate size does not divide, the MLP is replicated too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llmserve.arch.hf_config import ArchConfig
from llmserve.backends.base import BackendUnavailable

log = logging.getLogger("llmserve.jax")

AXIS = "tp"


@dataclass(frozen=True, slots=True)
class ShardingPlan:
    """Which parts of a decoder are split across the ``tp`` devices."""

    tp: int
    attention: bool
    mlp: bool
    vocab: bool

    @classmethod
    def for_config(cls, cfg: ArchConfig, tp: int) -> ShardingPlan:
        attention = tp > 1 and cfg.num_heads % tp == 0 and cfg.num_kv_heads % tp == 0
        mlp = tp > 1 and cfg.intermediate_size % tp == 0
        vocab = tp > 1 and cfg.vocab_size % tp == 0
        plan = cls(tp, attention, mlp, vocab)
        if tp > 1:
            log.info(
                "tensor parallel %d: attention %s (%d heads, %d KV heads), MLP %s, LM head %s",
                tp, _word(attention), cfg.num_heads, cfg.num_kv_heads, _word(mlp), _word(vocab),
            )  # fmt: skip
        return plan

    def layer_spec(self, name: str) -> tuple:
        """PartitionSpec entries of one layer parameter (see model.LAYER_WEIGHTS names)."""
        if self.attention and name in ("q", "k", "v"):
            return (None, AXIS)
        if self.attention and name in ("q_bias", "k_bias", "v_bias"):
            return (AXIS,)
        if self.attention and name == "o":
            return (AXIS, None)
        if self.mlp and name in ("gate", "up"):
            return (None, AXIS)
        if self.mlp and name in ("gate_bias", "up_bias"):
            return (AXIS,)
        if self.mlp and name == "down":
            return (AXIS, None)
        return ()

    def top_spec(self, name: str) -> tuple:
        if self.vocab and name == "lm_head":
            return (None, AXIS)
        return ()

    def cache_spec(self) -> tuple:
        """K [blocks, kv_heads, head_dim, block_size] and V [blocks, kv_heads, block_size, head_dim]:
        split by KV heads with attention."""
        return (None, AXIS, None, None) if self.attention else ()


def _word(flag: bool) -> str:
    return "split" if flag else "replicated"


def make_mesh(tp: int, platform: str | None) -> Any:
    """A 1-D mesh over the first ``tp`` devices of ``platform`` (the default platform if None)."""
    import jax
    from jax.sharding import Mesh

    devices = jax.devices(platform) if platform else jax.devices()
    if tp > len(devices):
        kind = devices[0].platform if devices else platform
        hint = ""
        if kind == "cpu":
            hint = " (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N devices)"
        raise BackendUnavailable(
            f"--tensor-parallel-size {tp} needs {tp} devices but JAX sees {len(devices)} {kind} device(s){hint}"
        )
    import numpy as np

    return Mesh(np.array(devices[:tp]), (AXIS,))


def named(mesh: Any, spec: tuple) -> Any:
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(*spec))


def param_shardings(params: dict, plan: ShardingPlan, mesh: Any) -> dict:
    """A pytree of NamedShardings matching the model's ``params``."""
    out = {name: named(mesh, plan.top_spec(name)) for name in params if name != "layers"}
    out["layers"] = [
        {name: named(mesh, plan.layer_spec(name)) for name in layer} for layer in params["layers"]
    ]
    return out
