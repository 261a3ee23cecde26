"""``llmserve bench``: throughput (offline engine) and serve (an OpenAI-compatible URL)."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; record results in docs/PERFORMANCE.md.")


@bench_app.command()
def throughput(
    model: str | None = typer.Option(None, help="Model (default: SmolLM2-135M-Instruct)."),
    num_prompts: int = typer.Option(64, help="Number of requests."),
    input_len: int = typer.Option(128, help="Prompt tokens per request (random ids)."),
    output_len: int = typer.Option(128, help="Output tokens per request (ignore_eos)."),
    dtype: str = typer.Option(
        "auto",
        help="Run dtype for both engines (auto: bfloat16 where the CPU has native bf16, else float32).",
    ),
    max_num_seqs: int = typer.Option(128, help="llmserve --max-num-seqs."),
    max_num_batched_tokens: int = typer.Option(2048, help="llmserve --max-num-batched-tokens."),
    hf_batch_size: int = typer.Option(8, help="transformers static batch size (0 skips the comparison)."),
    prefix_len: int = typer.Option(0, help="Also measure TTFT of a request sharing a prefix this long."),
    backend: str = typer.Option("cpu", help="llmserve backend to benchmark (cpu, jax, ...)."),
    structured: str | None = typer.Option(
        None, help="'json': also run the workload under a JSON schema and report the per-token overhead."
    ),
) -> None:
    """Run N requests through the engine, then the same workload through transformers generate."""
    import torch

    from llmserve.bench.throughput import (
        count_params,
        cpu_summary,
        matmul_peak_flops,
        prefix_ttft,
        random_prompts,
        run_llmserve,
        run_transformers,
    )
    from llmserve.engine.device_thread import device_thread
    from llmserve.offline import LLM

    llm = LLM(
        model,
        backend=backend,
        dtype=dtype,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    dtype = llm.engine.model_info.dtype  # what "auto" resolved to
    prompts = random_prompts(llm.tokenizer, num_prompts, input_len)
    ours = run_llmserve(llm, prompts, output_len)
    path = llm.engine.engine.model_dir
    params = count_params(path)
    # Measured on the device thread, like the engine: a second OpenMP thread would be throttled.
    device = device_thread()
    peak = device.run(matmul_peak_flops, getattr(torch, dtype))
    total_tok_s = (ours.output_tokens + num_prompts * input_len) / ours.seconds  # prompt + output, as vLLM
    achieved = 2 * params * total_tok_s
    typer.echo(f"workload: {num_prompts} requests x {input_len} prompt / {output_len} output tokens, {dtype}, backend {backend}, "
               f"{torch.get_num_threads()} threads, model {llm.model_name}")  # fmt: skip
    typer.echo(f"cpu: {cpu_summary()}")
    typer.echo(
        f"llmserve: {ours.output_tokens} tokens in {ours.seconds:.2f} s = {ours.tok_s:.1f} output tok/s "
        f"({total_tok_s:.1f} total tok/s)"
    )
    typer.echo(
        f"roofline: {params / 1e6:.1f} M params, 2*params*total tok/s = {achieved / 1e9:.1f} GFLOP/s of "
        f"{peak / 1e9:.1f} GFLOP/s measured {dtype} matmul peak ({100 * achieved / peak:.0f}%)"
    )
    if structured:
        from llmserve.bench.throughput import run_structured

        plain, constrained = run_structured(llm, prompts, output_len, structured)
        per_plain, per_constrained = (
            plain.seconds / plain.output_tokens,
            constrained.seconds / constrained.output_tokens,
        )
        for r, per in ((plain, per_plain), (constrained, per_constrained)):
            typer.echo(f"{r.name}: {r.output_tokens} tokens in {r.seconds:.2f} s = {r.tok_s:.1f} output tok/s, "
                       f"{per * 1000:.2f} ms per token")  # fmt: skip
        typer.echo(f"structured-output overhead per token: {100 * (per_constrained / per_plain - 1):+.1f}%")
    if prefix_len:
        first, second = prefix_ttft(llm, llm.tokenizer, prefix_len)
        typer.echo(
            f"prefix caching: TTFT {first * 1000:.0f} ms cold, {second * 1000:.0f} ms with a shared "
            f"{prefix_len}-token prefix ({100 * second / first:.0f}%)"
        )
    if hf_batch_size:
        del llm
        ref = device.run(run_transformers, path, prompts, output_len, hf_batch_size, getattr(torch, dtype))
        typer.echo(
            f"{ref.name}: {ref.output_tokens} tokens in {ref.seconds:.2f} s = {ref.tok_s:.1f} output tok/s"
        )
        typer.echo(f"ratio llmserve / transformers: {ours.tok_s / ref.tok_s:.2f}x")


@bench_app.command("serve")
def serve_bench(
    base_url: str = typer.Option("http://127.0.0.1:8000", help="Server to benchmark (OpenAI-compatible)."),
    model: str = typer.Option(..., help="Model name to send."),
    num_prompts: int = typer.Option(64, help="Number of requests."),
    input_len: int = typer.Option(128, help="Prompt length in (approximate) tokens."),
    output_len: int = typer.Option(128, help="Output tokens per request (ignore_eos)."),
    max_concurrency: int = typer.Option(32, help="Requests in flight at once (0: unlimited)."),
    request_rate: float = typer.Option(0.0, help="Poisson arrival rate in req/s (0: all at once)."),
    endpoint: str = typer.Option("completions", help="completions or chat."),
    api_key: str | None = typer.Option(None, help="Bearer token."),
    ignore_eos: bool = typer.Option(False, help="Send vLLM's ignore_eos (OpenAI-only servers reject it)."),
    compare_url: str | None = typer.Option(None, help="Run the same workload against this second server."),
    compare_model: str | None = typer.Option(None, help="Model name for --compare-url (default: --model)."),
    result_file: str | None = typer.Option(None, help="Write the summary (or both) as JSON here."),
) -> None:
    """Benchmark a running server: request/s, output tok/s, TTFT/TPOT/ITL mean/median/p99."""
    import asyncio
    import json

    from llmserve.bench import serve as bench

    prompts = bench.random_text_prompts(num_prompts, input_len)
    targets = [(base_url, model)] + ([(compare_url, compare_model or model)] if compare_url else [])
    chat = endpoint == "chat"
    summaries = []
    for url, name in targets:
        run = bench.run(
            url,
            name,
            prompts,
            output_len,
            max_concurrency,
            request_rate,
            chat,
            api_key,
            ignore_eos=ignore_eos,
        )
        summaries.append(asyncio.run(run))
        typer.echo(f"== {url} ({name})")
        typer.echo(bench.format_summary(summaries[-1]))
    if len(summaries) == 2:
        first, second = summaries
        ratio = first["output_throughput"] / max(second["output_throughput"], 1e-9)
        ttft = f"{first['ttft_ms']['median']:.0f} ms vs {second['ttft_ms']['median']:.0f} ms"
        typer.echo(f"output throughput ratio: {ratio:.2f}x; median TTFT {ttft}")
    if result_file:
        with open(result_file, "w") as fh:
            json.dump(summaries if len(summaries) > 1 else summaries[0], fh, indent=2)
