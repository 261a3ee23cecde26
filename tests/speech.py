"""Speech fixtures for the Whisper tests: espeak-ng clips of known sentences and a word error rate."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me tomorrow morning at nine o'clock.",
    "The weather today is sunny with a light breeze from the west.",
    "We need to buy milk, bread and eggs from the store.",
    "She opened the window and looked at the mountains.",
]

ESPEAK_MISSING = "espeak-ng is not installed (apt-get install -y espeak-ng)"


def espeak(text: str, path: Path, speed: int = 175, voice: str = "en-us") -> Path:
    """Synthesise ``text`` to a WAV file (22.05 kHz mono 16-bit) with espeak-ng (its default
    speed; the US voice, on which tiny.en did best here)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.skip(ESPEAK_MISSING)
    subprocess.run(
        [binary, "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True
    )
    return path


def words(text: str) -> list[str]:
    """Lower-case words without punctuation ("o'clock" stays one word)."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit distance over words."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)
