"""The quantised LM head with float against int8 activations, alternated in one process (not a test).

    PYTHONPATH=src:tests python tests/bench_head.py [gguf,int8]

For each --quantization method: the decode step (32 greedy steps after a chat prompt, 6 rounds)
and the head alone (50 calls on random rows) at 1 and 3 rows, with ``int8_activations`` off and
on; then the greedy tokens of both settings against the float32 model's.
"""

from __future__ import annotations

import sys
import time

import torch
from bench_quant import BATCH, BLOCK, Seqs, greedy, tokenized

from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.sources import packs


def runner(model_dir: str, quant: str | None) -> TorchModelRunner:
    r = TorchModelRunner(model_dir, "float32", quantization=quant, group_size=32)
    r.load()
    r.allocate_kv_cache(BATCH * 24 + 64, BLOCK)
    return r


def main(methods: list[str]) -> None:
    model_dir = str(packs.ensure_model("smollm2"))
    prompts, _ = tokenized(model_dir)
    reference = greedy(runner(model_dir, None), prompts)
    for quant in methods:
        r = runner(model_dir, quant)
        head = r.model.lm_head
        for rows in (1, 3):
            steps, alone = {False: [], True: []}, {False: [], True: []}
            for _ in range(6):
                for flag in (False, True):
                    head.int8_activations = flag
                    seqs = Seqs(r, prompts[:rows], 40)
                    seqs.step()
                    began = time.perf_counter()
                    for _ in range(32):
                        seqs.step()
                    steps[flag].append((time.perf_counter() - began) / 32)
                    x = torch.randn(rows, head.in_features)
                    began = time.perf_counter()
                    for _ in range(50):
                        head(x)
                    alone[flag].append((time.perf_counter() - began) / 50)
            for flag in (False, True):
                s, h = sorted(steps[flag]), sorted(alone[flag])
                print(f"{quant} {rows} row(s), {'int8' if flag else 'float'} x: step median {s[3] * 1e3:.2f} "
                      f"ms (min {s[0] * 1e3:.2f}), head alone median {h[3] * 1e3:.2f} ms (min {h[0] * 1e3:.2f})")  # fmt: skip
        for flag in (False, True):
            head.int8_activations = flag
            got = greedy(r, prompts)
            same = sum(a == b for g, w in zip(got, reference, strict=True) for a, b in zip(g, w, strict=True))
            total = sum(len(w) for w in reference)
            print(f"{quant}, {'int8' if flag else 'float'} x: greedy tokens equal to float32 {same}/{total}")


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["gguf", "int8"])
