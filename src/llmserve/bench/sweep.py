"""``llmserve bench serve``'s sweep: every server at every concurrency, back to back, in one table.

Each concurrency level gets its own prompts (the same for every server), so no level is served from
the prefix cache of the one before; servers take turns at each level, so a machine whose speed drifts
loads them alike. Ratios are llmserve's figure over the peer's, taken in this run.
"""

from __future__ import annotations

import asyncio

from llmserve.bench import serve as load
from llmserve.bench.servers import Server


def sweep(
    servers: list[Server],
    concurrency: list[int],
    num_prompts: int,
    input_len: tuple[int, int],
    output_len: int,
    chat: bool = True,
    api_key: str | None = None,
    seed: int = 0,
    request_rate: float = 0.0,
    echo=print,
) -> list[dict]:
    """Run the sweep; one summary per (level, server), each with ``server`` and ``concurrency``."""
    results = []
    for index, level in enumerate(concurrency):
        prompts = load.random_text_prompts(max(num_prompts, level), input_len, seed=seed + index)
        for server in servers:
            summary = asyncio.run(
                load.run(
                    server.url,
                    server.model,
                    prompts,
                    output_len,
                    level,
                    request_rate,
                    chat,
                    api_key,
                    seed=seed,
                    extra_body=server.extra_body,
                )  # fmt: skip
            )
            summary.update(server=server.name, kind=server.kind, fixed_length=server.fixed_length)
            results.append(summary)
            echo(f"  {server.name} at concurrency {level}: {summary['output_throughput']:.1f} output tok/s, "
                 f"{summary['failed']} failed")  # fmt: skip
    return results


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if ours > 0 and theirs > 0 else "-"


def format_table(results: list[dict], cpu: dict, workload: str) -> str:
    """The one table: per server and concurrency, with the peers' figures against llmserve's."""
    amx = "yes" if cpu["amx"] else "no"
    lines = [
        f"cpu: {cpu['model']}, {cpu['cores']} cores, AMX {amx} (lscpu flag amx_tile), "
        f"avx512_bf16 {'yes' if cpu['avx512_bf16'] else 'no'}",
        f"workload: {workload}",
        "",
    ]
    head = ("server", "conc", "reqs", "errors", "out tok/s", "TTFT med ms", "TTFT p99 ms", "ITL med ms",
            "tok/req", "counted", "llmserve/peer tok/s", "peer/llmserve TTFT")  # fmt: skip
    rows = []
    base = {r["concurrency"]: r for r in results if r["server"] == results[0]["server"]}
    for r in sorted(results, key=lambda r: (r["concurrency"], r is not base.get(r["concurrency"]))):
        ours = base[r["concurrency"]]
        peer = r is not ours
        rows.append((
            r["server"], str(r["concurrency"]), str(r["num_prompts"]), str(r["failed"]),
            f"{r['output_throughput']:.1f}", f"{r['ttft_ms']['median']:.0f}", f"{r['ttft_ms']['p99']:.0f}",
            f"{r['itl_ms']['median']:.1f}", f"{r['output_tokens_per_request']:.1f}", r["token_count"],
            _ratio(ours["output_throughput"], r["output_throughput"]) if peer else "",
            _ratio(r["ttft_ms"]["median"], ours["ttft_ms"]["median"]) if peer else "",
        ))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    errors = sorted({e for r in results for e in r["errors"]})
    if errors:
        lines += ["", "errors (first of each kind):", *(f"  {e}" for e in errors[:5])]
    short = [r for r in results if r["completed"] and r["output_tokens_per_request"] < r["output_len"]]
    for r in short:
        lines.append(f"note: {r['server']} at {r['concurrency']} produced {r['output_tokens_per_request']:.1f} "
                     f"of {r['output_len']} tokens per request (no fixed length: stopped at EOS)")  # fmt: skip
    return "\n".join(lines)
