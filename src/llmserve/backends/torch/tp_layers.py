"""Tensor parallelism, the layers: Megatron-style sharded modules and the plan that places them.

Sharding (Llama family, the same layout as the JAX backend's ``sharding.py``): q/k/v and gate/up
are column-parallel (each rank holds its heads / its slice of the intermediate dim, so attention
and the MLP activation need no communication), o_proj and down_proj are row-parallel (one
all-reduce each), and the embedding and LM head are split over the vocabulary (an all-reduce of
masked lookups, an all-gather of logit slices). KV heads are split too; with fewer KV heads than
ranks each KV head is replicated on ``ranks / kv_heads`` ranks.

When the heads do not split (SmolLM2-135M: 9 query / 3 KV heads on 2 ranks), attention and its
KV cache stay whole on every rank and only the MLP and the vocabulary are split; when the
intermediate size does not divide, the MLP stays whole too. Replicated parts compute the same
values on every rank from the same (all-reduced) input, so they need no communication.

The worker processes that run these layers are in ``tp_workers.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmserve.arch.hf_config import ArchConfig
from llmserve.errors import ConfigError
from llmserve.sources.weights import WeightsNotFoundError

log = logging.getLogger("llmserve.torch")


@dataclass(frozen=True, slots=True)
class TPGroup:
    """This process's place in the tensor-parallel group (the default torch.distributed group)."""

    rank: int
    world: int

    def all_reduce(self, x: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
        dist.all_reduce(x, op=op)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dim, in rank order."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, -1)


@dataclass(frozen=True, slots=True)
class ShardingPlan:
    """Which parts of a Llama-family decoder are split over ``world`` ranks (the rest is whole on
    every rank), and how many KV heads each rank's cache holds."""

    world: int
    attention: bool
    mlp: bool
    kv_heads: int

    @classmethod
    def for_config(cls, cfg: ArchConfig, world: int) -> ShardingPlan:
        heads, kv = cfg.num_heads, cfg.num_kv_heads
        # Whole query heads per rank, and each rank's query heads sharing KV heads it holds.
        attention = world > 1 and heads % world == 0 and (kv % world == 0 or world % kv == 0)
        mlp = world > 1 and cfg.intermediate_size % world == 0
        return cls(world, attention, mlp, max(kv // world, 1) if attention else kv)

    def describe(self, cfg: ArchConfig) -> str:
        def word(split: bool) -> str:
            return "split" if split else "replicated"

        return (
            f"tensor parallel {self.world}: attention {word(self.attention)} ({cfg.num_heads} heads, "
            f"{cfg.num_kv_heads} KV heads), MLP {word(self.mlp)} (intermediate size "
            f"{cfg.intermediate_size}), embedding and LM head split"
        )


class ColumnParallelLinear(nn.Module):
    """``x W^T + b`` with the output rows split over ranks. A fused projection is split shard by
    shard: ``shards`` lists each checkpoint shard's (rows, rows on this rank, first row taken)."""

    def __init__(self, in_features: int, shards: list[tuple[int, int, int]], bias: bool) -> None:
        super().__init__()
        self.shards = shards
        rows = sum(local for _, local, _ in shards)
        self.weight = nn.Parameter(torch.empty(rows, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(rows), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def load_tensor(self, name: str, tensor: torch.Tensor, shard: int | None) -> None:
        index = shard or 0
        rows, local, first = self.shards[index]
        if tensor.shape[0] != rows:
            raise WeightsNotFoundError(
                f"{name}: checkpoint shard has {tensor.shape[0]} rows, expected {rows}"
            )
        offset = sum(size for _, size, _ in self.shards[:index])
        getattr(self, name).data.narrow(0, offset, local).copy_(tensor.narrow(0, first, local))


class RowParallelLinear(nn.Module):
    """``x W^T + b`` with the input columns split over ranks: partial sums, one all-reduce, then
    the (replicated) bias once."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPGroup) -> None:
        super().__init__()
        self.tp, self.local = tp, in_features // tp.world
        self.weight = nn.Parameter(torch.empty(out_features, self.local), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tp.all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out.add_(self.bias)

    def load_tensor(self, name: str, tensor: torch.Tensor, shard: int | None) -> None:
        if name == "bias":
            self.bias.data.copy_(tensor)
            return
        if tensor.shape[1] != self.local * self.tp.world:
            raise WeightsNotFoundError(f"row-parallel weight has {tensor.shape[1]} columns, expected "
                                       f"{self.local * self.tp.world}")  # fmt: skip
        self.weight.data.copy_(tensor.narrow(1, self.tp.rank * self.local, self.local))


class VocabParallelEmbedding(nn.Module):
    """Embedding rows split over ranks (the vocabulary padded to a multiple of the ranks)."""

    def __init__(self, vocab: int, hidden: int, tp: TPGroup) -> None:
        super().__init__()
        self.tp, self.vocab = tp, vocab
        self.per_rank = -(-vocab // tp.world)
        self.start = tp.rank * self.per_rank
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(out.masked_fill_(outside[:, None], 0))

    def load_tensor(self, name: str, tensor: torch.Tensor, shard: int | None) -> None:
        if tensor.shape[0] != self.vocab:
            raise WeightsNotFoundError(f"vocabulary tensor has {tensor.shape[0]} rows, expected {self.vocab}")
        rows = max(min(self.vocab - self.start, self.per_rank), 0)
        self.weight.data.zero_()
        self.weight.data[:rows].copy_(tensor[self.start : self.start + rows])


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for this rank's vocabulary slice, all-gathered into the full row."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tp.all_gather_last(F.linear(hidden, self.weight))[:, : self.vocab]


def check_tensor_parallel(cfg: ArchConfig, world: int) -> None:
    """Raise ConfigError when ``cfg``'s model has no tensor-parallel implementation."""
    from llmserve.arch.registry import torch_model_class
    from llmserve.backends.torch.llama import LlamaForCausalLM

    if not issubclass(torch_model_class(cfg.architecture), LlamaForCausalLM):
        raise ConfigError(
            f"--tensor-parallel-size {world}: {cfg.architecture} has no tensor-parallel support"
        )


def shard_model(model: nn.Module, tp: TPGroup) -> None:
    """Replace a (meta-device) Llama-family model's projections by their parallel versions where
    the plan (``ShardingPlan.for_config``) splits them."""
    from llmserve.backends.torch.layers import GatedMLP, PagedAttention

    cfg = model.cfg
    check_tensor_parallel(cfg, tp.world)
    plan = ShardingPlan.for_config(cfg, tp.world)
    if tp.rank == 0:
        log.info(plan.describe(cfg))
    for module in list(model.modules()):
        if isinstance(module, PagedAttention) and plan.attention:
            _shard_attention(module, tp)
        elif isinstance(module, GatedMLP) and plan.mlp:
            _shard_mlp(module, tp)
    model.model.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
    model.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp)


def _shard_attention(module: nn.Module, tp: TPGroup) -> None:
    world, rank = tp.world, tp.rank
    hidden, d = module.qkv_proj.in_features, module.head_dim
    heads, kv = module.heads // world, max(module.kv_heads // world, 1)
    kv_first = rank * module.kv_heads // world * d
    shards = [(module.q_size, heads * d, rank * heads * d)] + [(module.kv_size, kv * d, kv_first)] * 2
    o_bias = module.o_proj.bias is not None
    module.qkv_proj = ColumnParallelLinear(hidden, shards, module.qkv_proj.bias is not None)
    module.o_proj = RowParallelLinear(module.q_size, hidden, o_bias, tp)
    module.heads, module.kv_heads, module.q_size, module.kv_size = heads, kv, heads * d, kv * d


def _shard_mlp(module: nn.Module, tp: TPGroup) -> None:
    hidden, inter = module.gate_up_proj.in_features, module.down_proj.in_features
    part = inter // tp.world
    bias = module.gate_up_proj.bias is not None
    module.gate_up_proj = ColumnParallelLinear(hidden, [(inter, part, tp.rank * part)] * 2, bias)
    module.down_proj = RowParallelLinear(inter, hidden, module.down_proj.bias is not None, tp)
