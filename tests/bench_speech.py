"""Word error rate and real-time factor of a speech model on espeak-ng sentences (not a test).

    PYTHONPATH=src:tests python tests/bench_speech.py whisper-tiny.en whisper-base
    PYTHONPATH=src:tests python tests/bench_speech.py --long whisper-tiny.en whisper-base

RTF = processing seconds / audio seconds, for the requests one at a time and all at once;
``--long``: one ~70 s passage, decoded window after window (Whisper's long-form rules).
"""

from __future__ import annotations

import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

from speech import PASSAGE, SENTENCES, espeak, word_error_rate

from llmserve.engine.audio_input import decode_audio
from llmserve.engine.device_thread import device_thread
from llmserve.engine.transcription import TranscriptionOptions, TranscriptionService
from llmserve.sources import packs


async def _text(service, samples, **options) -> str:
    return (await _transcript(service, samples, **options)).text


async def _transcript(service, samples, **options):
    async for event in service.transcribe(samples, TranscriptionOptions(language="en", **options)):
        if event.done:
            return event.transcript
    raise RuntimeError("no transcript")


async def bench_long(alias: str, samples) -> None:
    from llmserve.backends.torch.whisper_runner import WhisperRunner

    runner = device_thread().run(WhisperRunner, str(packs.ensure_model(alias)), "cpu", 2)
    service = TranscriptionService(runner)
    audio_s = len(samples) / 16000
    start = time.perf_counter()
    out = await _transcript(service, samples, timestamps=True)
    elapsed = time.perf_counter() - start
    windows = len({s.seek for s in out.segments})
    temps = sorted({s.temperature for s in out.segments})
    start = time.perf_counter()
    await _transcript(service, samples, timestamps=True, words=True)
    with_words = time.perf_counter() - start
    print(
        f"{alias} long-form: {audio_s:.1f} s, {windows} windows, {len(out.segments)} segments, "
        f"temperatures {temps} | WER {word_error_rate(PASSAGE, out.text):.3f} | RTF {elapsed / audio_s:.3f}, "
        f"with word timestamps {with_words / audio_s:.3f}"
    )


async def bench(alias: str, clips) -> None:
    from llmserve.backends.torch.whisper_runner import WhisperRunner

    runner = device_thread().run(WhisperRunner, str(packs.ensure_model(alias)), "cpu", len(clips))
    service = TranscriptionService(runner)
    audio_s = sum(len(c) for c in clips) / 16000
    await _text(service, clips[0])  # warm-up
    start = time.perf_counter()
    texts = [await _text(service, c) for c in clips]
    one_by_one = time.perf_counter() - start
    start = time.perf_counter()
    await asyncio.gather(*(_text(service, c) for c in clips))
    together = time.perf_counter() - start
    wers = [word_error_rate(ref, hyp) for ref, hyp in zip(SENTENCES, texts, strict=True)]
    print(
        f"{alias}: WER {sum(wers) / len(wers):.3f} (per sentence {', '.join(f'{w:.2f}' for w in wers)}) | "
        f"{audio_s:.1f} s of audio | RTF one at a time {one_by_one / audio_s:.3f}, "
        f"{len(clips)} at once {together / audio_s:.3f}"
    )


def main(aliases: list[str]) -> None:
    print(f"CPU: {platform.processor() or platform.machine()}, {_cpu_model()}")
    if aliases and aliases[0] == "--long":
        with tempfile.TemporaryDirectory() as tmp:
            samples = decode_audio(espeak(PASSAGE, Path(tmp) / "passage.wav").read_bytes())
        for alias in aliases[1:] or ["whisper-tiny.en"]:
            asyncio.run(bench_long(alias, samples))
        return
    with tempfile.TemporaryDirectory() as tmp:
        clips = [
            decode_audio(espeak(s, Path(tmp) / f"{i}.wav").read_bytes()) for i, s in enumerate(SENTENCES)
        ]
    for alias in aliases:
        asyncio.run(bench(alias, clips))


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line), "?")
    return f"{name}, AMX {'yes' if 'amx_tile' in info else 'no'}"


if __name__ == "__main__":
    main(sys.argv[1:] or ["whisper-tiny.en"])
