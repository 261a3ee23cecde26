"""Word timestamps as Whisper finds them (openai/whisper ``timing.py``): the cross-attention of
the model's alignment heads over a window's text tokens, normalised per head, median-filtered,
averaged, and aligned to the audio frames by dynamic time warping.
"""

from __future__ import annotations

import string

import numpy as np
import torch
import torch.nn.functional as F

from llmserve.backends.torch.whisper import TextDecoder, _heads

FRAMES_PER_SECOND = 50  # encoder positions per second
MEDIAN_WIDTH = 7
PUNCTUATION_BEFORE = "\"'“¿([{-"
PUNCTUATION_AFTER = "\"'.。,，!！?？:：”)]}、"


def alignment_weights(decoder: TextDecoder, tokens: list[int], crosses, heads) -> torch.Tensor:
    """[len(heads), T, A] softmaxed cross-attention of the alignment heads over ``tokens``;
    ``crosses`` is the window's (k, v) per layer, each [1, H, A, hd]."""
    ids = torch.tensor([tokens], device=crosses[0][0].device)
    t = len(tokens)
    x = decoder.embed(ids) + decoder.positions[:t]
    causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
    wanted = {}
    for index, (layer, (ck, cv)) in enumerate(zip(decoder.layers, crosses, strict=True)):
        q, k, v = (_heads(p, layer.n_heads) for p in layer.self_qkv(layer.self_norm(x)).chunk(3, dim=-1))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        x = x + layer.self_out(attn.transpose(1, 2).reshape(1, t, -1))
        q = _heads(layer.cross_q(layer.cross_norm(x)), layer.n_heads)
        scores = (q @ ck.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [1, H, T, A]
        for layer_index, head in heads:
            if layer_index == index:
                wanted[(layer_index, head)] = scores[0, head].float().softmax(dim=-1)
        x = x + layer.cross_out((torch.softmax(scores, dim=-1) @ cv).transpose(1, 2).reshape(1, t, -1))
        x = x + layer.ffn(x)
    return torch.stack([wanted[h] for h in heads])


def median_filter(x: torch.Tensor, width: int = MEDIAN_WIDTH) -> torch.Tensor:
    """Median over a sliding window of the last axis (edges reflected)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    flat = x.reshape(-1, 1, x.shape[-1])  # reflection padding wants [N, C, L]
    padded = F.pad(flat, (pad, pad), mode="reflect").reshape(*x.shape[:-1], -1)
    return padded.unfold(-1, width, 1).sort()[0][..., pad]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through ``cost`` [N, M] from (0, 0) to (N-1, M-1), as
    (row indices, column indices); filled one anti-diagonal at a time."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf, dtype=np.float64)
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    total[0, 0] = 0.0
    for k in range(2, n + m + 1):
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        options = np.stack([total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]])
        choice = np.argmin(options, axis=0)  # ties: diagonal, then up, then left
        total[i, j] = cost[i - 1, j - 1] + options[choice, np.arange(len(i))]
        trace[i, j] = choice
    trace[0, :], trace[:, 0] = 2, 1
    rows, cols = [], []
    i, j = n, m
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return np.array(rows[::-1]), np.array(cols[::-1])


def split_words(tokenizer, tokens: list[int]) -> list[tuple[str, list[int]]]:
    """Text tokens -> words with their tokens: a word starts at a leading space or punctuation
    (languages written without spaces are split per character group)."""
    groups: list[tuple[str, list[int]]] = []
    pending: list[int] = []
    for token in tokens:  # group tokens until they decode to whole characters
        pending.append(token)
        text = tokenizer.decode(pending)
        if "\ufffd" not in text:
            groups.append((text, pending))
            pending = []
    words: list[tuple[str, list[int]]] = []
    for text, ids in groups:
        if not words or text.startswith(" ") or text.strip() in string.punctuation:
            words.append((text, list(ids)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + ids)
    return words


def _merge_punctuation(words: list[dict]) -> list[dict]:
    """Attach opening punctuation to the next word and closing punctuation to the previous one."""
    out: list[dict] = []
    carry = ""
    for word in words:
        stripped = word["word"].strip()
        if stripped and all(c in PUNCTUATION_BEFORE for c in stripped) and not out:
            carry += word["word"]
        elif stripped and all(c in PUNCTUATION_AFTER for c in stripped) and out:
            out[-1]["word"] += word["word"]
        else:
            out.append({**word, "word": carry + word["word"]})
            carry = ""
    return out


def word_times(
    weights: torch.Tensor, tokenizer, text_tokens: list[int], prefix: int, frames: int
) -> list[dict]:
    """Words of ``text_tokens`` with start/end seconds from the window's start. ``weights`` is
    ``alignment_weights`` over prefix tokens, then the text tokens, then end-of-text; ``frames``
    the encoder positions that hold audio."""
    if not text_tokens:
        return []
    w = weights[:, :, : max(frames, 1)]
    std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
    w = median_filter((w - mean) / (std + 1e-10))
    matrix = w.mean(dim=0)[prefix : prefix + len(text_tokens) + 1]  # text tokens and end-of-text
    rows, cols = dtw(-matrix.double().cpu().numpy())
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    jump_times = cols[jumps] / FRAMES_PER_SECOND
    words = split_words(tokenizer, text_tokens)
    bounds = np.cumsum([0] + [len(ids) for _, ids in words])
    out = [
        {"word": text, "start": float(jump_times[bounds[i]]), "end": float(jump_times[bounds[i + 1]])}
        for i, (text, _) in enumerate(words)
    ]
    return _merge_punctuation(out)
