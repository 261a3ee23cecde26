"""Word error rate and real-time factor of a speech model on espeak-ng sentences (not a test).

    PYTHONPATH=src:tests python tests/bench_speech.py whisper-tiny.en whisper-base

RTF = processing seconds / audio seconds, for the requests one at a time and all at once.
"""

from __future__ import annotations

import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

from speech import SENTENCES, espeak, word_error_rate

from llmserve.engine.audio_input import decode_audio
from llmserve.engine.device_thread import device_thread
from llmserve.engine.transcription import TranscriptionOptions, TranscriptionService
from llmserve.sources import packs


async def _text(service, samples) -> str:
    async for event in service.transcribe(samples, TranscriptionOptions(language="en")):
        if event.done:
            return event.transcript.text
    raise RuntimeError("no transcript")


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
