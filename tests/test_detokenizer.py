"""Incremental detokenization: multi-byte characters, spacing, special tokens, stop strings."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.engine.sampling import SamplingParams

TEXTS = [
    "Héllo wörld! naïve café, Ångström, façade.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧 in one line.",
    "日本語のテキストと中文字符，还有한국어도 있어요。",
    "def f(x):\n    return {'a': [1, 2]}\n\n\tif x  >  0:  pass\n",
    "   leading spaces, trailing spaces   ",
    "Mixed: £5 → €6 ≈ ¥700; math ∑∫√ and arrows ⟶ ⇒.",
]

CHAT_PROMPT = "<|im_start|>user\nSay something in 日本語<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def byte_fallback() -> Tokenizer:
    """A tiny Llama-style tokenizer: SentencePiece spaces ("▁") and byte-fallback tokens.

    Trained on ASCII only, so every accented letter, CJK character or emoji becomes 2-4
    ``<0xXX>`` tokens.
    """
    corpus = [
        "the quick brown fox jumps over the lazy dog",
        "hello world, this is a small corpus for a tiny tokenizer",
        "def main(): return 0  # code with spaces",
        "Stop strings and streaming text are tested here.",
    ] * 20
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)] + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=200,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
    )
    trainer_tok.train_from_iterator(corpus, trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def encode(tokenizer, text: str) -> list[int]:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text).ids
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer, ids: list[int], skip_special_tokens: bool = True) -> str:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def chunked(ids: list[int], rng: random.Random | None) -> list[list[int]]:
    """One token at a time (rng None) or random chunk sizes 1..6."""
    out, i = [], 0
    while i < len(ids):
        n = 1 if rng is None else rng.randint(1, 6)
        out.append(ids[i : i + n])
        i += n
    return out


def stream(
    tokenizer, ids: list[int], prompt: list[int] = (), rng=None, **params
) -> tuple[list[str], IncrementalDetokenizer]:
    """Feed ``ids`` in chunks; the deltas (finish's last) and the detokenizer."""
    detok = IncrementalDetokenizer(tokenizer, list(prompt), SamplingParams(**params))
    deltas = [detok.add(chunk) for chunk in chunked(ids, rng)]
    deltas.append(detok.finish())
    assert "".join(deltas) == detok.text
    return deltas, detok


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_stream_matches_full_decode(smol, text):
    ids = encode(smol, text)
    prompt = encode(smol, CHAT_PROMPT)
    expected = decode(smol, ids)
    assert expected == text
    for rng in (None, random.Random(1), random.Random(2), random.Random(3)):
        deltas, _ = stream(smol, ids, prompt, rng)
        assert "".join(deltas) == expected
        assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_fallback_stream_matches_full_decode(byte_fallback, text):
    ids = encode(byte_fallback, text)
    assert any(byte_fallback.id_to_token(i).startswith("<0x") for i in ids[:200]) or text.isascii()
    expected = decode(byte_fallback, ids)
    for rng in (None, random.Random(4), random.Random(5)):
        deltas, _ = stream(byte_fallback, ids, [], rng)
        assert "".join(deltas) == expected
        assert not any("\ufffd" in d for d in deltas)


def test_partial_characters_are_held_until_complete(byte_fallback, smol):
    for tok in (byte_fallback, smol):
        ids = encode(tok, "a😀")
        assert len(ids) >= 3  # the emoji takes several tokens
        deltas, _ = stream(tok, ids)
        # "a", nothing while the emoji's bytes arrive, the emoji when complete, nothing at the end.
        assert deltas[0] == "a" and deltas[-2:] == ["😀", ""]
        assert set(deltas[1:-2]) == {""}


def test_first_output_token_keeps_its_leading_space(byte_fallback):
    # SentencePiece decoders drop the leading space of a decode; after a prompt it is a real space.
    prompt = encode(byte_fallback, "hello")
    ids = encode(byte_fallback, "hello world")[len(prompt) :]
    assert decode(byte_fallback, ids) == "world"  # decoded alone, the space is lost
    deltas, _ = stream(byte_fallback, ids, prompt)
    assert "".join(deltas) == " world"
    full, head = decode(byte_fallback, prompt + ids), decode(byte_fallback, prompt)
    assert "".join(deltas) == full[len(head) :]


def test_prompt_ending_in_multibyte_characters(smol, byte_fallback):
    for tok in (smol, byte_fallback):
        prompt = encode(tok, "日本語😀日本語😀")
        ids = encode(tok, " and more 😀 text")
        deltas, _ = stream(tok, ids, prompt)
        full, head = decode(tok, prompt + ids), decode(tok, prompt)
        assert "".join(deltas) == full[len(head) :]


def test_prompt_cut_inside_a_character(smol):
    # Only possible with token-id prompts: the output completes a character the prompt started.
    # The output's own text is what it decodes to on its own; nothing of the prompt leaks in.
    for text in ("This is the very end of the prompt 😀", "😀"):
        head = encode(smol, text)
        prompt, ids = head[:-1], head[-1:] + encode(smol, " ok")
        deltas, _ = stream(smol, ids, prompt)
        assert "".join(deltas) == decode(smol, ids) == "\ufffd ok"


def test_invalid_bytes_are_not_held_forever(byte_fallback):
    lone = byte_fallback.token_to_id("<0x80>")  # a continuation byte with no start
    start = byte_fallback.token_to_id("<0xF0>")  # the start of a 4-byte character
    ids = [lone] + encode(byte_fallback, "ok")
    deltas, _ = stream(byte_fallback, ids)
    assert "".join(deltas[:-1]) == decode(byte_fallback, ids) == "\ufffd ok"  # not left for finish
    # A character cut off at the end comes out on finish as U+FFFD.
    deltas, detok = stream(byte_fallback, encode(byte_fallback, "ok") + [start])
    assert deltas[-1] == "\ufffd" and detok.text == "ok\ufffd"


def test_skip_special_tokens(smol):
    ids = encode(smol, "Hi there<|im_end|>\n<|im_start|>user")
    assert "".join(stream(smol, ids)[0]) == "Hi there\nuser"
    kept = "".join(stream(smol, ids, skip_special_tokens=False)[0])
    assert kept == "Hi there<|im_end|>\n<|im_start|>user" == decode(smol, ids, skip_special_tokens=False)


def test_spaces_between_special_tokens(minilm):
    ids = minilm.encode("hello world")  # [CLS] hello world [SEP]
    with_spaces = "".join(stream(minilm, ids, skip_special_tokens=False)[0])
    assert with_spaces == decode(minilm, ids, skip_special_tokens=False) == "[CLS] hello world [SEP]"
    without = stream(minilm, ids, skip_special_tokens=False, spaces_between_special_tokens=False)[0]
    assert "".join(without) == "[CLS]hello world[SEP]"
    # Only meaningful when special tokens are kept.
    assert "".join(stream(minilm, ids, spaces_between_special_tokens=False)[0]) == "hello world"


def test_special_tokens_without_spaces_split_the_decode(smol):
    emoji = encode(smol, "😀")
    ids = encode(smol, "Hi 日本<|im_end|>\n<|im_start|>user") + emoji[:2] + [2] + encode(smol, " end")
    specials = {1, 2}
    reference, segment = "", []
    for token in ids + [None]:  # decode the text between added tokens separately
        if token is None or token in specials:
            reference += decode(smol, segment, skip_special_tokens=False)
            reference += smol.convert_ids_to_tokens(token) if token is not None else ""
            segment = []
        else:
            segment.append(token)
    # The cut-off emoji before <|im_end|> cannot be completed across it.
    assert reference == "Hi 日本<|im_end|>\n<|im_start|>user\ufffd<|im_end|> end"
    for rng in (None, random.Random(8)):
        params = dict(skip_special_tokens=False, spaces_between_special_tokens=False)
        assert "".join(stream(smol, ids, encode(smol, CHAT_PROMPT), rng, **params)[0]) == reference


def test_wordpiece_stream_matches_full_decode(minilm):
    ids = minilm.encode("Tokenization of unbelievably long words, and punctuation!", add_special_tokens=False)
    for rng in (None, random.Random(7)):
        assert "".join(stream(minilm, ids, [101], rng)[0]) == decode(minilm, ids)


def test_detokenize_false_produces_no_text(smol):
    deltas, detok = stream(smol, encode(smol, "Hello world"), detokenize=False)
    assert deltas == ["", "", ""] and detok.text == "" and not detok.stopped


# ---------------------------------------------------------------- stop strings


def test_stop_string_spanning_tokens(smol):
    ids = encode(smol, "Hello world, hello world")  # Hello | world | , | hello | world
    deltas, detok = stream(smol, ids, stop=["lo wo"])
    assert detok.text == "Hel" and detok.stopped and detok.stop_reason == "lo wo"
    assert deltas[-1] == ""  # finish after a stop adds nothing


def test_stop_string_at_the_very_start(smol):
    ids = encode(smol, "Hello world")
    detok = IncrementalDetokenizer(smol, [], SamplingParams(stop=["Hello"]))
    assert detok.add(ids[:1]) == "" and detok.stopped
    assert detok.add(ids[1:]) == "" and detok.finish() == "" and detok.text == ""


def test_repeated_stop_string_cuts_at_the_first(smol):
    ids = encode(smol, "one, two, three, four")
    for rng in (None, random.Random(3)):
        assert stream(smol, ids, rng=rng, stop=[", "])[1].text == "one"


def test_include_stop_str_in_output(smol):
    ids = encode(smol, "Hello world, hello world")
    deltas, detok = stream(smol, ids, stop=["o w"], include_stop_str_in_output=True)
    assert detok.text == "Hello w" and detok.stop_reason == "o w"
    # Nothing is held back in this mode: "Hello" streams before the stop string completes.
    assert deltas[0] == "Hello"


def test_earliest_stop_wins_whatever_the_order(smol):
    ids = encode(smol, "alpha beta gamma delta")
    for stops in (["gamma", "beta"], ["beta", "gamma"], ["delta", "a b", "beta"]):
        for rng in (None, random.Random(9)):
            detok = stream(smol, ids, rng=rng, stop=stops)[1]
            expected = ("alph", "a b") if "a b" in stops else ("alpha ", "beta")
            assert (detok.text, detok.stop_reason) == expected
    # Stops completed by the same chunk: the one that ends first in the text wins, even though
    # "xyzw" starts earlier (a character-by-character stream would have stopped at "yz").
    detok = IncrementalDetokenizer(smol, [], SamplingParams(stop=["xyzw", "yz"]))
    detok.add(encode(smol, "axyzwb"))
    assert (detok.text, detok.stop_reason) == ("ax", "yz")


def test_possible_stop_prefix_is_held_then_released(smol):
    detok = IncrementalDetokenizer(smol, [], SamplingParams(stop=["cat!"]))
    assert detok.add(encode(smol, "The")) == "The"
    assert detok.add(encode(smol, " cat")) == " "  # "cat" could start "cat!"
    assert detok.add(encode(smol, " sat")) == "cat sat"  # it cannot any more
    assert detok.add(encode(smol, " ca")) == " "
    assert detok.finish() == "ca"  # at the end, held text is released
    assert detok.text == "The cat sat ca" and not detok.stopped


def test_stop_string_made_of_multibyte_characters(smol, byte_fallback):
    for tok in (smol, byte_fallback):
        ids = encode(tok, "before 😀🎉 after")
        for rng in (None, random.Random(2)):
            deltas, detok = stream(tok, ids, rng=rng, stop=["🎉"])
            assert detok.text == "before 😀" and detok.stop_reason == "🎉"
            assert not any("\ufffd" in d for d in deltas)


def test_no_delta_ever_shows_text_that_a_stop_string_removes(smol):
    text = "The answer is 42. END The rest is hidden."
    ids = encode(smol, text)
    for rng in (None, random.Random(11), random.Random(12)):
        detok = IncrementalDetokenizer(smol, [], SamplingParams(stop=["END", "The rest"]))
        for chunk in chunked(ids, rng):
            detok.add(chunk)
            assert "The answer is 42. ".startswith(detok.text)
        assert detok.text == "The answer is 42. " and detok.stop_reason == "END"


def oracle(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """The first stop string completed in the text (earliest end, then longest)."""
    best = None
    for stop in stops:
        start = text.find(stop)
        if start >= 0 and (best is None or (start + len(stop), start) < (best[1], best[0])):
            best = (start, start + len(stop), stop)
    if best is None:
        return text, None
    return text[: best[1] if include else best[0]], best[2]


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="ab cé日😀\n", min_size=0, max_size=30),
    stops=st.lists(st.text(alphabet="ab cé日😀", min_size=1, max_size=4), max_size=3),
    include=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_stop_strings_match_an_oracle_for_any_chunking(smol, text, stops, include, seed):
    ids = encode(smol, text)
    expected = oracle(decode(smol, ids), stops, include)
    for rng in (None, random.Random(seed)):
        deltas, detok = stream(smol, ids, rng=rng, stop=stops, include_stop_str_in_output=include)
        assert (detok.text, detok.stop_reason) == expected
        assert not any("\ufffd" in d for d in deltas)
