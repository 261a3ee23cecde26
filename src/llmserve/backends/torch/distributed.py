"""Tensor parallelism: Megatron-style sharded layers, and the worker processes that run them.

Sharding (Llama family): q/k/v and gate/up are column-parallel (each rank holds its heads / its
slice of the intermediate dim, so attention and the MLP activation need no communication),
o_proj and down_proj are row-parallel (one all-reduce each), and the embedding and LM head are
split over the vocabulary (an all-reduce of masked lookups, an all-gather of logit slices). Two
all-reduces per layer in all. KV heads are split too; with fewer KV heads than ranks each KV head
is replicated on ``ranks / kv_heads`` ranks. Attention heads must divide evenly: a model whose
heads the size does not divide (SmolLM2-135M: 9 heads, 3 KV heads) is refused with a clear error
rather than silently replicated.

Processes: rank 0 is the engine/server process; ranks 1..N-1 are workers it starts
(``TensorParallelDriver``). Each step, rank 0 pickles the runner call (``forward`` with the batch,
``allocate_kv_cache``, ...) into every worker's stdin; the workers run the same call, so every
rank executes the same sequence of collectives; only rank 0 samples. Commands travel over pipes,
not collectives, so an idle server never hits a collective timeout, and a worker sees EOF (and
exits) when rank 0 goes away; a watchdog also ends it if rank 0 dies mid-collective. Collectives
use gloo on CPU and NCCL on CUDA, over a file rendezvous (no port to pick). One node only.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmserve.arch.hf_config import ArchConfig
from llmserve.backends.base import Batch, BatchItem
from llmserve.errors import ConfigError
from llmserve.sources.weights import WeightsNotFoundError

_START_TIMEOUT = 600.0  # seconds for a worker to load its shard


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


# ----------------------------------------------------------------------------------- layers


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
    """Raise ConfigError when ``cfg`` cannot be split over ``world`` ranks."""
    from llmserve.arch.registry import torch_model_class
    from llmserve.backends.torch.llama import LlamaForCausalLM

    if not issubclass(torch_model_class(cfg.architecture), LlamaForCausalLM):
        raise ConfigError(
            f"--tensor-parallel-size {world}: {cfg.architecture} has no tensor-parallel support"
        )
    heads, kv = cfg.num_heads, cfg.num_kv_heads
    if heads % world or (kv % world and world % kv) or cfg.intermediate_size % world:
        raise ConfigError(
            f"--tensor-parallel-size {world} does not divide this model ({cfg.architecture}: {heads} attention "
            f"heads, {kv} KV heads, intermediate size {cfg.intermediate_size}); attention heads are not "
            f"replicated: use a size that divides the heads and the intermediate size, or 1"
        )


def shard_model(model: nn.Module, tp: TPGroup) -> None:
    """Replace a (meta-device) Llama-family model's projections by their parallel versions."""
    from llmserve.backends.torch.layers import GatedMLP, PagedAttention

    cfg, world, rank = model.cfg, tp.world, tp.rank
    check_tensor_parallel(cfg, world)
    for module in list(model.modules()):
        if isinstance(module, PagedAttention):
            hidden, d = module.qkv_proj.in_features, module.head_dim
            heads, kv = module.heads // world, max(module.kv_heads // world, 1)
            kv_first = rank * module.kv_heads // world * d
            shards = [(module.q_size, heads * d, rank * heads * d)] + [(module.kv_size, kv * d, kv_first)] * 2
            o_bias = module.o_proj.bias is not None
            module.qkv_proj = ColumnParallelLinear(hidden, shards, module.qkv_proj.bias is not None)
            module.o_proj = RowParallelLinear(module.q_size, hidden, o_bias, tp)
            module.heads, module.kv_heads, module.q_size, module.kv_size = heads, kv, heads * d, kv * d
        elif isinstance(module, GatedMLP):
            hidden, inter = module.gate_up_proj.in_features, module.down_proj.in_features
            part = inter // world
            bias = module.gate_up_proj.bias is not None
            module.gate_up_proj = ColumnParallelLinear(hidden, [(inter, part, rank * part)] * 2, bias)
            module.down_proj = RowParallelLinear(inter, hidden, module.down_proj.bias is not None, tp)
    model.model.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
    model.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp)


# -------------------------------------------------------------------------------- processes


def slim_batch(batch: Batch) -> Batch:
    """What a worker needs of a batch: token ids, positions, block tables, which rows give logits."""
    items = [
        BatchItem(it.seq_id, it.token_ids, it.start_pos, it.block_table, it.sample, None, (), (),
                  want_prompt_logprobs=it.want_prompt_logprobs)
        for it in batch.items
    ]  # fmt: skip
    return Batch(items, batch.block_size)


def init_group(rank: int, world: int, device_type: str, init_method: str) -> TPGroup:
    if dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is already initialised in this process: one TP model per process"
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return TPGroup(rank, world)


class TensorParallelDriver:
    """Rank 0's side: starts ranks 1..N-1 and sends them every runner call rank 0 makes."""

    def __init__(self, world: int, device_type: str, model_dir: str, dtype: str, use_kernels: bool) -> None:
        self.world, self.device_type = world, device_type
        self.rendezvous_dir = tempfile.mkdtemp(prefix="llmserve-tp-")
        self.init_method = f"file://{os.path.join(self.rendezvous_dir, 'rendezvous')}"
        self.threads = max(torch.get_num_threads() // world, 1)
        if device_type == "cpu":
            torch.set_num_threads(self.threads)  # ranks share the cores
        self.procs: list[subprocess.Popen] = []
        self._status: list[int] = []
        self._joined = False
        code = "from llmserve.backends.torch.distributed import worker_main; worker_main()"
        for rank in range(1, world):
            read_fd, write_fd = os.pipe()
            spec = dict(rank=rank, world=world, device_type=device_type, model_dir=model_dir, dtype=dtype,
                        use_kernels=use_kernels, init_method=self.init_method, threads=self.threads,
                        status_fd=write_fd, parent=os.getpid())  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
            proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=env,
            )
            os.close(write_fd)
            self.procs.append(proc)
            self._status.append(read_fd)
        atexit.register(self.shutdown)

    def connect(self) -> TPGroup:
        """Wait until every worker has loaded its shard, then join the process group as rank 0."""
        deadline = time.monotonic() + _START_TIMEOUT
        pending = dict(zip(self._status, self.procs, strict=True))
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 1.0)
            for fd in ready:
                proc = pending.pop(fd)
                if os.read(fd, 16) != b"ready":  # EOF: the worker died while loading
                    self.shutdown()
                    raise RuntimeError(
                        f"tensor-parallel worker (pid {proc.pid}) failed to start; see its log"
                    )
            if time.monotonic() > deadline:
                self.shutdown()
                raise RuntimeError(f"tensor-parallel workers did not load in {_START_TIMEOUT:.0f} s")
        group = init_group(0, self.world, self.device_type, self.init_method)
        self._joined = True
        return group

    def send(self, method: str, *args) -> None:
        """Have every worker call ``runner.<method>(*args)`` (rank 0 then makes the same call)."""
        data = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for proc in self.procs:
            proc.stdin.write(struct.pack("<Q", len(data)) + data)
            proc.stdin.flush()

    def shutdown(self) -> None:
        """Stop the workers (politely, then by force) and leave the process group."""
        procs, self.procs = self.procs, []
        for proc in procs:
            try:
                proc.stdin.close()  # EOF: the worker's command loop ends
            except OSError:
                pass
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for fd in self._status:
            try:
                os.close(fd)
            except OSError:
                pass
        self._status = []
        if self._joined and dist.is_initialized():
            dist.destroy_process_group()
        self._joined = False
        shutil.rmtree(self.rendezvous_dir, ignore_errors=True)
        atexit.unregister(self.shutdown)


def _watch_parent(parent: int) -> None:
    """End this worker when rank 0 dies, even while it is blocked in a collective."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="llmserve-tp-watchdog", daemon=True).start()


def worker_main() -> None:
    """Entry point of ranks 1..N-1 (``python -c``, spec as JSON in argv[1])."""
    import signal

    from llmserve.backends.torch.runner import TorchModelRunner

    spec = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle; it stops us
    _watch_parent(spec["parent"])
    torch.set_num_threads(spec["threads"])
    rank, device = spec["rank"], spec["device_type"]
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    tp = TPGroup(rank, spec["world"])
    runner = TorchModelRunner(spec["model_dir"], spec["dtype"], device, spec["use_kernels"], tp=tp)
    runner.load()
    os.write(spec["status_fd"], b"ready")
    os.close(spec["status_fd"])
    init_group(rank, spec["world"], spec["device_type"], spec["init_method"])
    commands = sys.stdin.buffer
    while header := commands.read(8):
        (size,) = struct.unpack("<Q", header)
        method, args = pickle.loads(commands.read(size))
        getattr(runner, method)(*args)
    dist.destroy_process_group()
