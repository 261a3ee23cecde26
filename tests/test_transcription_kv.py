"""Whisper served by the engine on paged KV blocks (in process, real tiny.en weights): blocks taken
as sequences grow and all given back after finished, cancelled and preempted windows; best-of
sampling keeps the likeliest candidate; streams fall back to hotter decodings as other requests do.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from speech import ESPEAK_MISSING, PASSAGE, SENTENCES, espeak, word_error_rate

from llmserve.backends.torch.whisper_runner import CANDIDATE_SEED_STEP
from llmserve.engine.audio_input import decode_audio
from llmserve.engine.device_thread import device_thread
from llmserve.engine.transcription import BLOCK_SIZE, TranscriptionOptions, TranscriptionService
from llmserve.sources import packs

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason=ESPEAK_MISSING)


@pytest.fixture(scope="module")
def runner():
    from llmserve.backends.torch.whisper_runner import WhisperRunner

    return device_thread().run(WhisperRunner, str(packs.ensure_model("whisper-tiny.en")), "cpu", 4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv-speech")
    return [decode_audio(espeak(s, root / f"{i}.wav").read_bytes()) for i, s in enumerate(SENTENCES)]


def _service(runner, **kwargs) -> TranscriptionService:
    service = TranscriptionService(runner, **kwargs)
    assert service.blocks.num_free_blocks == service.blocks.num_blocks
    return service


async def _run(service, samples, **options):
    deltas, transcript = [], None
    async for event in service.transcribe(samples, TranscriptionOptions(language="en", **options)):
        deltas.append(event.delta) if event.delta else None
        transcript = event.transcript if event.done else transcript
    return transcript, deltas


async def _idle(service) -> None:
    for _ in range(500):  # the device thread finishes what the last event left
        if not service.has_work():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the service kept working")


def test_blocks_grow_with_the_text_and_all_come_back(runner, clips):
    service = _service(runner)
    blocks = service.blocks
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, blocks.num_blocks - blocks.num_free_blocks)
            await asyncio.sleep(0.005)

    async def cancelled():  # gone before its transcript: its blocks must come back too
        events = service.transcribe(clips[4], TranscriptionOptions(language="en"))
        task = asyncio.ensure_future(events.__anext__())
        while service.stats()["num_running"] < 1 or not blocks.usage:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main():
        watcher = asyncio.ensure_future(watch())
        outs = await asyncio.gather(*(_run(service, clip) for clip in clips[:3]), cancelled())
        watcher.cancel()
        await _idle(service)
        return outs

    outs = asyncio.run(main())
    for (transcript, _), sentence in zip(outs[:3], SENTENCES, strict=False):
        assert word_error_rate(sentence, transcript.text) <= 0.4, transcript.text
    # three short windows at once hold a few blocks each, far less than three 448-token sequences
    assert 3 <= peak <= 4 * blocks.blocks_for(64)
    assert (
        blocks.num_free_blocks == blocks.num_blocks and service.stats()["memory"]["kv_cache_used_bytes"] == 0
    )
    assert runner.free_windows == runner.max_windows and not runner.seqs


def test_a_window_preempted_for_blocks_is_decoded_again_the_same(runner, clips):
    # Two windows with 223-token prompts (14 blocks each) in a pool of 29 blocks: both begin,
    # then both need a 15th block and only one is left, so the newer one gives its blocks back
    # and begins again once the first is done.
    prompt = tuple(runner.tokenizer.encode(" " + PASSAGE, add_special_tokens=False)[:220])
    assert runner.prompt_len(_start(prompt)) == 14 * BLOCK_SIZE - 1
    service = _service(runner, kv_tokens=29 * BLOCK_SIZE)
    assert service.blocks.num_blocks == 29

    async def main():
        alone = [await _run(service, clip, prompt_ids=prompt, seed=1) for clip in clips[:2]]
        assert service.num_preemptions == 0
        together = await asyncio.gather(
            *(_run(service, clip, prompt_ids=prompt, seed=1) for clip in clips[:2])
        )
        await _idle(service)
        return alone, together

    alone, together = asyncio.run(main())
    assert service.num_preemptions >= 1
    assert [t.text for t, _ in together] == [t.text for t, _ in alone]
    assert service.blocks.num_free_blocks == service.blocks.num_blocks


def _start(prompt):
    from llmserve.backends.base import TranscriptionStart

    return TranscriptionStart(None, language="en", previous=list(prompt))


def test_best_of_keeps_the_candidate_likeliest_per_token(runner, clips):
    service = _service(runner)
    options = {"temperature": 1.0, "fallback": False}

    async def main():
        best, _ = await _run(service, clips[1], seed=5, **options)
        singles = [
            (await _run(service, clips[1], seed=5 + i * CANDIDATE_SEED_STEP, best_of=1, **options))[0]
            for i in range(5)
        ]
        await _idle(service)
        return best, singles

    best, singles = asyncio.run(main())

    def per_token(t):  # sum of log-probabilities over the window's tokens, no timestamps here
        (segment,) = t.segments
        return segment.avg_logprob * (len(segment.tokens) + 1) / len(segment.tokens)

    texts = [t.text for t in singles]
    assert len(set(texts)) > 1  # the candidates differ, so the choice matters
    chosen = max(singles, key=per_token)
    assert best.text == chosen.text and best.segments[0].avg_logprob == chosen.segments[0].avg_logprob
    assert best.segments[0].temperature == 1.0
    assert service.blocks.num_free_blocks == service.blocks.num_blocks


def test_a_stream_falls_back_and_sends_only_the_chosen_decoding(runner, tmp_path):
    # German speech transcribed as English: greedy decoding is unsure (average log-probability
    # below -1), so the window is decoded again hotter, 5 candidates each time.
    german = "Guten Morgen, wie geht es dir heute? Ich gehe jetzt nach Hause."
    samples = decode_audio(espeak(german, tmp_path / "de.wav", voice="de").read_bytes())
    service = _service(runner)

    async def main():
        out = await _run(service, samples, seed=1)
        await _idle(service)
        return out

    transcript, deltas = asyncio.run(main())
    (segment,) = transcript.segments
    assert segment.temperature > 0  # it fell back
    assert deltas == [segment.text.lstrip()]  # one delta: the chosen decoding, nothing rejected
    assert "".join(deltas) == transcript.text
    assert service.blocks.num_free_blocks == service.blocks.num_blocks
