"""Tensor parallelism, the processes: rank 0's driver and the workers that run ranks 1..N-1.

Rank 0 is the engine/server process; ranks 1..N-1 are workers it starts
(``TensorParallelDriver``). Each step, rank 0 pickles the runner call (``forward`` with the batch,
``allocate_kv_cache``, ...) into every worker's stdin; the workers run the same call, so every
rank executes the same sequence of collectives; only rank 0 samples. Commands travel over pipes,
not collectives, so an idle server never hits a collective timeout, and a worker sees EOF (and
exits) when rank 0 goes away; a watchdog also ends it if rank 0 dies mid-collective. Collectives
use gloo on CPU and NCCL on CUDA, over a file rendezvous (no port to pick). One node only.

The sharded layers and the sharding plan are in ``tp_layers.py``.
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

import torch
import torch.distributed as dist

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.tp_layers import TPGroup

_START_TIMEOUT = 600.0  # seconds for a worker to load its shard


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
        self._stopping = False
        self.failure: str | None = None  # set when a worker exits on its own
        code = "from llmserve.backends.torch.tp_workers import worker_main; worker_main()"
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
            threading.Thread(
                target=self._watch, args=(rank, proc), name=f"llmserve-tp-{rank}", daemon=True
            ).start()
        atexit.register(self.shutdown)

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        """Record a worker that exits while the driver still needs it (killed, crashed)."""
        code = proc.wait()
        if not self._stopping and self.failure is None:
            self.failure = f"tensor-parallel worker rank {rank} (pid {proc.pid}) exited with {code}"

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
        if self.failure is not None:
            raise RuntimeError(self.failure)
        data = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for proc in self.procs:
            proc.stdin.write(struct.pack("<Q", len(data)) + data)
            proc.stdin.flush()

    def shutdown(self) -> None:
        """Stop the workers (politely, then by force) and leave the process group."""
        self._stopping = True
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
