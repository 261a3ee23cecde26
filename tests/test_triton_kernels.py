"""The Triton kernels of the cuda backend against plain torch references, on CPU.

The kernels run under the Triton interpreter, which needs TRITON_INTERPRET=1 *before triton is
first imported* (triton decorates its own library functions at import). The variable is set
while this module imports triton and the kernel modules, and while its tests run, then
restored, so no other module sees it. When something imported triton earlier in this session
(torch._dynamo does), the kernel tests cannot run in this process: then they are skipped here and
``test_kernels_in_a_fresh_interpreter`` runs this file again in a new process.

bf16 is broken in the interpreter: kernels are checked in fp32 and fp16, and compiled for an H100
(sm_90, bf16) without running. Shapes are tiny but awkward: block boundaries, one token, contexts
spanning several splits and tiles, GQA ratios 1/4/8, head sizes 64/128 (and 80: padded).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

_imported_before = "triton" in sys.modules
_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton")
    from triton.language import standard as triton_standard
    from triton.runtime.interpreter import InterpretedFunction

    from llmserve.backends.torch.triton import kv_write, paged_decode, prefill, rms_norm, rotary, silu_mul
    from llmserve.backends.torch.triton import ops as triton_ops

    # Kernel modules imported earlier without the interpreter: decorate their kernels again.
    for _module in (kv_write, paged_decode, prefill, rms_norm, rotary, silu_mul):
        if not all(
            isinstance(v, InterpretedFunction) for k, v in vars(_module).items() if k.endswith("_kernel")
        ):
            importlib.reload(_module)
finally:
    if _saved is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _saved

# Triton's own library (tl.sum, tl.max, ...) is interpreted only if triton was first imported here.
IN_PROCESS = not _imported_before or isinstance(triton_standard.sum, InterpretedFunction)

from llmserve.backends.base import Batch, BatchItem  # noqa: E402
from llmserve.backends.torch.triton.cuda_graphs import DecodeGraphs, capture_sizes, pick_bucket  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import triton_cases as cases  # noqa: E402
from triton_cases import DECODE_CASES, DECODE_IDS, HEAD_IDS, HEADS, PREFILL_CASES, PREFILL_IDS  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(request):
    """The interpreter also reads the variable while kernels run: set it for these tests only."""
    if not IN_PROCESS and request.node.originalname != "test_kernels_in_a_fresh_interpreter":
        pytest.skip("triton was imported before the interpreter was on: run in a fresh process")
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if saved is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = saved


# ------------------------------------------------------------------------------- attention
# The cases and references live in triton_cases.py (tests/gpu/checks.py runs them on a GPU).


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("heads,kv_heads,head_dim", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("block_size,splits,window", DECODE_CASES, ids=DECODE_IDS)
def test_paged_decode(dtype, heads, kv_heads, head_dim, block_size, splits, window):
    cases.decode_case(dtype, heads, kv_heads, head_dim, block_size, splits, window)


def test_paged_decode_strided_q_and_padded_head_dim():
    cases.strided_q_case()


def test_decode_splits_fill_the_gpu():
    # batch 1, 8 KV heads, 4k context on 132 SMs: 8 * 33 programs = 2 per SM
    assert paged_decode.decode_splits(1, 8, 4096, 132, tile=64) == 33
    assert paged_decode.decode_splits(256, 8, 4096, 132) == 1  # big batches fill it alone
    assert paged_decode.decode_splits(1, 8, 100, 132, tile=64) == 2  # at most one split per tile


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("heads,kv_heads,head_dim", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("block_size,window", PREFILL_CASES, ids=PREFILL_IDS)
def test_prefill_over_cached_prefix(dtype, heads, kv_heads, head_dim, block_size, window):
    cases.prefill_case(dtype, heads, kv_heads, head_dim, block_size, window)


# ----------------------------------------------------------------------------- small fused ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kv_write_skips_padding_slots(dtype):
    cases.kv_write_case(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_and_add_rms_norm(dtype, hidden):
    cases.rms_norm_case(dtype, hidden)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_silu_mul(dtype):
    cases.silu_mul_case(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 80])
def test_rotary_on_fused_qkv_leaves_v_alone(dtype, head_dim):
    cases.rotary_case(dtype, head_dim)


# ----------------------------------------------------------------------- the model on TritonOps


def make_runners(path, kind: str):
    """(plain torch runner, runner with every Triton kernel installed as on CUDA), both fp32."""
    import transformers

    from llmserve.backends.torch.runner import TorchModelRunner

    extra = {"qwen3": dict(head_dim=32)}.get(kind, {})
    cls = transformers.Qwen3Config if kind == "qwen3" else transformers.LlamaConfig
    config = cls(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=1, vocab_size=128, max_position_embeddings=64, **extra)  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    runners = []
    for triton_kernels in (False, True):
        runner = TorchModelRunner(str(path), "float32", use_kernels=False)
        runner.load()
        if triton_kernels:
            runner.model.ops = ops = triton_ops.TritonOps()
            runner.decode_kernel, runner.prefill_kernel = ops.paged_decode, ops.prefill
        runner.allocate_kv_cache(12, 4)
        runners.append(runner)
    return runners


TOKENS = [[(7 * i + 3) % 128 for i in range(13)], [(5 * i + 1) % 128 for i in range(7)]]
TABLES = [[3, 7, 1, 9], [4, 0, 11]]


def run_steps(runners, steps):
    """Feed (sequence, start, new tokens) steps to both runners; compare their logits."""
    for step in steps:
        batch = []
        for seq, start, n in step:
            ids = TOKENS[seq][start : start + n]
            batch.append(
                BatchItem(seq, ids, start, TABLES[seq], True, None, ids, [], want_prompt_logprobs=True)
            )
        (ref, ref_prompt), (ours, ours_prompt) = (r.forward(Batch(batch, block_size=4)) for r in runners)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
        for i in ref_prompt:
            torch.testing.assert_close(ours_prompt[i], ref_prompt[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_model_on_triton_ops_matches_torch_ops(tmp_path, kind):
    """Prefill chunks, then decodes mixed with a chunk, through the runner: same logits."""
    runners = make_runners(tmp_path, kind)
    run_steps(runners, [[(0, 0, 7)], [(0, 7, 4), (1, 0, 6)], [(1, 6, 1), (0, 11, 1)]])


def test_graph_buffers_give_the_eager_decode(tmp_path):
    """What a captured decode graph computes, run eagerly on its static buffers (no GPU here):
    a batch padded to its bucket gives the same logits as the eager step, and the pad rows write
    no KV (else the next step would read garbage)."""
    ref, ours = make_runners(tmp_path, "llama")
    run_steps((ref, ours), [[(0, 0, 9), (1, 0, 5)]])
    graphs = DecodeGraphs([1, 4], max_blocks=4, block_size=4, device=torch.device("cpu"))
    for step in range(2):
        items = [
            BatchItem(s, [TOKENS[s][n]], n, TABLES[s], True, None, [], [])
            for s, n in ((0, 9 + step), (1, 5 + step))
        ]
        bucket = graphs.prepare(items)
        assert bucket == 4
        meta = graphs.metadata(bucket, ours.decode_kernel, None)
        hidden = ours.model(graphs.meta[0, :bucket], graphs.meta[1, :bucket], ours.kv_caches, meta)
        logits = ours.model.compute_logits(hidden[:2])
        expected, _ = ref.forward(Batch(items, block_size=4))
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    for a, b in zip(ref.kv_caches, ours.kv_caches, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # pads wrote nothing


def test_profile_batches_fit_their_cache(tmp_path):
    """The memory-profiling step (prompts as large as the scheduler allows, then one decode each)
    runs on the blocks it asks for."""
    from llmserve.backends.torch.runner import profile_batches

    prefill_batch, decode_batch, num_blocks = profile_batches(40, 3, 4, 64)
    assert [len(it.token_ids) for it in prefill_batch.items] == [
        14,
        13,
        13,
    ] and prefill_batch.num_tokens == 40
    assert [it.start_pos for it in decode_batch.items] == [14, 13, 13]
    assert num_blocks == 12 and sorted(b for it in prefill_batch.items for b in it.block_table) == list(
        range(12)
    )
    ref, _ = make_runners(tmp_path, "llama")
    ref.allocate_kv_cache(num_blocks, 4)
    for batch in (prefill_batch, decode_batch):
        logits, _ = ref.forward(batch)
        assert logits.shape == (3, 128)
    _, _, blocks = profile_batches(2048, 128, 16, 8)  # short max_model_len: 7 tokens + 1 decode each
    assert blocks == 128


# ---------------------------------------------------------------------- CUDA graph bookkeeping


def test_capture_sizes_and_buckets():
    assert capture_sizes(128)[:6] == [1, 2, 4, 8, 16, 24] and capture_sizes(128)[-1] == 128
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(3) == [1, 2, 3] and capture_sizes(1000)[-1] == 256
    sizes = capture_sizes(64)
    assert [pick_bucket(n, sizes) for n in (1, 3, 5, 8, 9, 64)] == [1, 4, 8, 8, 16, 64]
    assert pick_bucket(65, sizes) is None


def test_decode_batch_is_padded_to_its_bucket():
    graphs = DecodeGraphs([1, 2, 4, 8], max_blocks=5, block_size=4, device=torch.device("cpu"))
    graphs.graphs = {size: None for size in graphs.sizes}  # pretend captured
    items = [
        BatchItem(0, [11], 6, [9, 2], True, None, [], []),  # position 6: block 2, slot 2*4+2
        BatchItem(1, [12], 0, [5], True, None, [], []),
        BatchItem(2, [13], 16, [1, 3, 4, 6, 8], True, None, [], []),
    ]
    assert graphs.can_run(items)
    assert not graphs.can_run(items + [BatchItem(3, [1, 2], 0, [7], True, None, [], [])])  # a prefill
    assert not graphs.can_run([BatchItem(4, [1], 20, [0] * 6, True, None, [], [])])  # past max_blocks
    bucket, width = graphs.stage(items)
    assert (bucket, width) == (4, 5)
    ids, positions, slots, lens = graphs.host_meta[:, :4].tolist()
    assert ids == [11, 12, 13, 0] and positions == [6, 0, 16, 0]
    assert slots == [10, 20, 32, -1]  # the pad row writes nowhere
    assert lens == [7, 1, 17, 1]  # and attends to one (ignored) token
    assert graphs.host_tables[:3].tolist() == [[9, 2, 0, 0, 0], [5, 0, 0, 0, 0], [1, 3, 4, 6, 8]]
    assert graphs.host_tables[3, 0] == 0
    # A smaller batch afterwards re-pads the rows the bigger one used.
    assert graphs.stage(items[:1]) == (1, 2)
    graphs.stage(items[:2])
    assert graphs.host_meta[:, :2].tolist() == [[11, 12], [6, 0], [10, 20], [7, 1]]
    with pytest.raises(ValueError, match="do not fit"):
        graphs.stage(items * 3)


# --------------------------------------------------------------------- compiled for an H100

# Run in a fresh interpreter: triton's own helpers were decorated for the interpreter here.
COMPILE_SM90 = """
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from llmserve.backends.torch.triton import kv_write, paged_decode, prefill, rms_norm, rotary, silu_mul

def compile_sm90(kernel, types, constexprs):
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
    print(kernel.fn.__name__, flush=True)

bf16 = "*bf16"
attention = {"q_ptr": bf16, "cache_ptr": bf16, "tables_ptr": "*i32", "lens_ptr": "*i64", "out_ptr": bf16,
             "starts_ptr": "*i64", "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32",
             "scale_log2": "fp32", "stride_cb": "i64"}
compile_sm90(paged_decode._decode_kernel, attention, dict(GROUP=4, GROUP_PAD=16, HEAD_DIM=128, D_PAD=128,
             BLOCK_SIZE=16, TILE=64, SPLIT=True, PRECISION="tf32"))
compile_sm90(paged_decode._reduce_kernel, {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "out_ptr": bf16},
             dict(HEAD_DIM=128, D_PAD=128, SPLITS_PAD=16))
compile_sm90(prefill._prefill_kernel, attention, dict(GROUP=4, HEAD_DIM=128, D_PAD=128, BLOCK_SIZE=16,
             BLOCK_M=64, BLOCK_N=64, PRECISION="tf32"))
compile_sm90(kv_write._kv_write_kernel, {"kv_ptr": bf16, "cache_ptr": bf16, "slots_ptr": "*i64"},
             dict(ROW=2048, BLOCK=2048))
compile_sm90(rms_norm._rms_norm_kernel, {"x_ptr": bf16, "res_ptr": bf16, "w_ptr": bf16, "out_ptr": bf16,
             "eps": "fp32"}, dict(HAS_RESIDUAL=True, BLOCK=4096))
compile_sm90(rotary._rope_kernel, {"x_ptr": bf16, "cos_ptr": "*fp32", "sin_ptr": "*fp32"},
             dict(HALF=64, HALF_PAD=64, BLOCK_H=8))
compile_sm90(silu_mul._silu_mul_kernel, {"x_ptr": bf16, "out_ptr": bf16}, dict(BLOCK=1024))
"""


def test_kernels_compile_for_h100_in_bf16():
    """Through Triton's real GPU pipeline down to an sm_90 cubin (ptxas ships with triton), no GPU
    needed: checks what the interpreter does not (dot shapes and dtypes, shared memory, bf16)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        pytest.skip("triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_SM90], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [
        "_decode_kernel", "_reduce_kernel", "_prefill_kernel", "_kv_write_kernel", "_rms_norm_kernel",
        "_rope_kernel", "_silu_mul_kernel",
    ]  # fmt: skip


def test_kernels_in_a_fresh_interpreter():
    if IN_PROCESS:
        pytest.skip("the kernel tests ran in this process")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" in proc.stdout  # this test, skipped there
