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
    quantization: str | None = typer.Option(
        None,
        "--quantization",
        "-q",
        help="llmserve --quantization (int8, int4, gguf); transformers runs unquantised.",
    ),
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
        quantization=quantization,
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
    typer.echo(f"workload: {num_prompts} requests x {input_len} prompt / {output_len} output tokens, {dtype}"
               f"{f', --quantization {quantization}' if quantization else ''}, backend {backend}, "
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
    url: str | None = typer.Option(
        None,
        "--url",
        "--base-url",
        help="A running llmserve (or any OpenAI-compatible) server; "
        "without it the benchmark starts `llmserve serve --model MODEL` itself.",
    ),
    model: str | None = typer.Option(
        None,
        help="With --url: the model name to send (default: the first of /v1/models). "
        "Without: the model to serve (default smollm2).",
    ),
    serve_args: str = typer.Option(
        "--embedding-model none --max-model-len 2048",
        help="Extra `llmserve serve` options when it is started here.",
    ),
    compare_url: list[str] = typer.Option(
        [], help="NAME=URL of a peer (OpenAI-compatible: llama-server, transformers serve, vLLM); repeatable."
    ),
    compare_model: list[str] = typer.Option(
        [], help="NAME=MODEL: the model name to send to that peer (default: the first of its /v1/models)."
    ),
    start_peer: list[str] = typer.Option(
        [],
        help="NAME=COMMAND: start this peer (its command has {port} in it), benchmark it, stop it; repeatable.",
    ),
    start_timeout: float = typer.Option(900.0, help="Seconds a started server has to answer /v1/models."),
    concurrency: str = typer.Option(
        "1,8,32,64",
        "--concurrency",
        "--max-concurrency",
        help="Requests in flight at once, one level per value.",
    ),
    num_prompts: int = typer.Option(64, help="Requests per level (at least the level's concurrency)."),
    input_len: str = typer.Option(
        "100-250", help="Prompt length in words (~tokens): N or LOW-HIGH, uniform."
    ),
    output_len: int = typer.Option(
        128, help="Output tokens per request (ignore_eos where the server takes it)."
    ),
    ignore_eos: bool = typer.Option(
        True, help="Ask every server for exactly --output-len tokens where it can."
    ),
    endpoint: str = typer.Option("chat", help="chat or completions."),
    request_rate: float = typer.Option(
        0.0, help="Poisson arrival rate in req/s (0: as fast as the level allows)."
    ),
    seed: int = typer.Option(0, help="Seed of the prompts."),
    api_key: str | None = typer.Option(None, help="Bearer token (sent to every server)."),
    json_path: str | None = typer.Option(None, "--json", "--result-file", help="Write the raw figures here."),
) -> None:
    """Sweep concurrency over llmserve and its peers: output tok/s, TTFT, ITL, errors, ratios."""
    import json

    import httpx

    from llmserve.bench import servers as srv
    from llmserve.bench.sweep import format_table, sweep

    if endpoint not in ("chat", "completions"):
        raise typer.BadParameter("--endpoint takes chat or completions")
    try:
        levels = [int(v) for v in concurrency.split(",") if v.strip()]
        low, _, high = input_len.partition("-")
        lengths = (int(low), int(high or low))
        peers = srv.parse_pairs(compare_url, "--compare-url")
        started_peers = srv.parse_pairs(start_peer, "--start-peer")
        peer_models = dict(srv.parse_pairs(compare_model, "--compare-model"))
        for _, peer_url in peers:
            if not peer_url.startswith(("http://", "https://")):
                raise ValueError(f"--compare-url takes NAME=URL with an http(s) URL, got {peer_url!r}")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not levels or min(levels) < 1 or lengths[0] < 1 or lengths[1] < lengths[0]:
        raise typer.BadParameter("--concurrency needs positive integers and --input-len N or LOW-HIGH")
    chat = endpoint == "chat"
    servers: list[srv.Server] = []
    try:
        if url:
            servers.append(srv.Server("llmserve", url, model))
        else:
            typer.echo(f"starting llmserve serve {model or 'smollm2'} {serve_args}")
            started = srv.Started(
                "llmserve", srv.llmserve_command(model or "smollm2", serve_args), start_timeout
            )
            servers.append(srv.Server("llmserve", started.url, started=started))
        for name, command in started_peers:
            typer.echo(f"starting {name}: {command}")
            started = srv.Started(name or "peer", command, start_timeout)
            servers.append(srv.Server(name or "peer", started.url, peer_models.get(name), started=started))
        for name, peer_url in peers:
            servers.append(srv.Server(name or peer_url.split("://")[-1], peer_url, peer_models.get(name)))
        names = [s.name for s in servers]
        if len(set(names)) < len(names):
            raise RuntimeError(f"server names must differ (NAME=URL): {', '.join(names)}")
        for server in servers:
            srv.probe(server, output_len, chat, api_key, ignore_eos)
            length = (
                f"fixed by {', '.join(sorted(server.extra_body))}" if server.fixed_length else "not fixed"
            )
            typer.echo(
                f"{server.name}: {server.url} model {server.model} ({server.kind}; output length {length})"
            )
        results = sweep(servers, levels, num_prompts, lengths, output_len, chat, api_key, seed, request_rate,
                        echo=typer.echo)  # fmt: skip
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        for server in servers:
            if server.started:
                server.started.stop()
    cpu = srv.cpu_info()
    workload = (
        f"streaming {endpoint}, greedy, {output_len} output tokens per request, prompts of "
        f"{lengths[0]}-{lengths[1]} words (seed {seed}), max({num_prompts}, concurrency) requests per level; "
        "tokens counted from the server's usage (counted=usage) or one per streamed delta (counted=deltas)"
    )
    typer.echo("")
    typer.echo(format_table(results, cpu, workload))
    if json_path:
        servers_json = [{"name": s.name, "url": s.url, "model": s.model, "kind": s.kind,
                         "extra_body": s.extra_body} for s in servers]  # fmt: skip
        with open(json_path, "w") as fh:
            json.dump(
                {"cpu": cpu, "workload": workload, "servers": servers_json, "results": results}, fh, indent=2
            )
    if any(r["failed"] for r in results):
        raise typer.Exit(1)
