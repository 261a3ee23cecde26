"""Whisper in torch: our model.bin reader, our log-mel front end, and greedy parity with
CTranslate2 itself, token for token, on espeak-ng clips."""

from __future__ import annotations

import importlib
import struct
import subprocess
import sys
import wave

import numpy as np
import pytest
from speech import SENTENCES, Decoding, espeak

from llmserve.backends.base import TranscriptionStart
from llmserve.backends.torch.audio_features import chunk_features, mel_filters
from llmserve.backends.torch.ct2_reader import CT2FormatError, read_ct2
from llmserve.engine.audio_input import decode_audio, read_wav
from llmserve.errors import InvalidRequestError
from llmserve.sources import packs


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(path, variables, aliases=(), version=6):
    """A model.bin in CTranslate2's layout: {name: (dtype_id, array)}."""
    out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<I", 1)
    out += struct.pack("<I", len(variables))
    for name, (type_id, array) in variables.items():
        out += _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        data = array.tobytes()
        out += struct.pack("<BI", type_id, len(data)) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += _string(alias) + _string(target)
    path.write_bytes(out)


def test_reader_loads_float32_float16_and_scaled_int8(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    scale = (127 / np.abs(w).max(axis=1)).astype(np.float32)
    q = np.round(w * scale[:, None]).astype(np.int8)
    _write_ct2(
        tmp_path / "model.bin",
        {
            "a/weight": (0, w),
            "b/weight": (4, w.astype(np.float16)),
            "c/weight": (1, q),
            "c/weight_scale": (0, scale),
            "n_heads": (2, np.array(6, dtype=np.int16)),
        },
        aliases=[("d/weight", "c/weight")],
    )
    model = read_ct2(tmp_path)
    assert model.spec == "TestSpec"
    np.testing.assert_array_equal(model.float32("a/weight"), w)
    np.testing.assert_allclose(model.float32("b/weight"), w, atol=2e-3)
    np.testing.assert_allclose(model.float32("c/weight"), w, atol=np.abs(w).max() / 127)
    np.testing.assert_array_equal(model.float32("d/weight"), model.float32("c/weight"))  # alias + its scale
    assert model.raw("c/weight").dtype == np.int8 and int(model.raw("n_heads")) == 6


def test_reader_rejects_truncated_files(tmp_path):
    _write_ct2(tmp_path / "model.bin", {"a": (0, np.ones(16, np.float32))})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-20])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(tmp_path)


def test_log_mel_matches_transformers_feature_extractor():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    np.testing.assert_allclose(mel_filters(), fe.mel_filters.T, atol=1e-7)
    audio = (np.random.default_rng(1).standard_normal(16000 * 7) * 0.1).astype(np.float32)
    ref = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(chunk_features(audio)[0][2].numpy(), ref, atol=1e-4)


def test_long_audio_is_cut_into_30_second_windows():
    windows = chunk_features(np.zeros(16000 * 65, np.float32))
    assert [(s, e) for s, e, _ in windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert all(mel.shape == (80, 3000) for _, _, mel in windows)


def _wav(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def test_wav_decoding_mixes_channels_and_resamples():
    t = np.arange(8000) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 16000).astype("<i2")
    stereo = np.stack([tone, tone], axis=1)
    samples = decode_audio(_wav(stereo, 8000, channels=2))
    assert len(samples) == 16000 and samples.dtype == np.float32
    assert abs(np.abs(samples).max() - 16000 / 32768) < 0.02
    mono, rate = read_wav(_wav(tone, 8000))
    assert rate == 8000 and len(mono) == 8000


def test_undecodable_audio_is_a_400():
    with pytest.raises(InvalidRequestError):
        decode_audio(b"this is not audio at all", "notes.mp3")
    with pytest.raises(InvalidRequestError):
        decode_audio(b"", "empty.wav")
    with pytest.raises(InvalidRequestError):
        decode_audio(b"RIFF\x10\x00\x00\x00WAVEjunkjunk", "broken.wav")


def _ctranslate2():
    try:
        return importlib.import_module("ctranslate2")
    except ImportError:
        pass
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "ctranslate2"], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip("ctranslate2 is not installed and `pip install ctranslate2` failed")
    importlib.invalidate_caches()
    return importlib.import_module("ctranslate2")


@pytest.mark.parametrize("alias, count", [("whisper-tiny.en", 3), ("whisper-base", 2)])
def test_greedy_tokens_equal_ctranslate2(alias, count, tmp_path):
    ct2 = _ctranslate2()
    from llmserve.backends.torch.whisper_runner import WhisperRunner

    model_dir = packs.ensure_model(alias)
    ours = Decoding(WhisperRunner(str(model_dir), max_windows=2))
    theirs = ct2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    for i, sentence in enumerate(SENTENCES[:count]):
        samples = decode_audio(espeak(sentence, tmp_path / f"{i}.wav").read_bytes())
        mel = chunk_features(samples)[0][2]
        features = ct2.StorageView.from_array(mel[None].numpy())
        for timestamps in (False, True):
            prompt = ours.runner.tokens.prompt("en", "transcribe", timestamps, [])
            expected = theirs.generate(features, [prompt], beam_size=1)[0].sequences_ids[0]
            assert ours.greedy(mel, timestamps, language="en") == expected, (sentence, timestamps)


def test_batched_decoding_equals_one_at_a_time(tmp_path):
    from llmserve.backends.torch.whisper_runner import WhisperRunner

    decoding = Decoding(WhisperRunner(str(packs.ensure_model("whisper-tiny.en")), max_windows=3))
    eot = decoding.runner.eot
    mels = [
        chunk_features(decode_audio(espeak(s, tmp_path / f"{i}.wav").read_bytes()))[0][2]
        for i, s in enumerate(SENTENCES[:3])
    ]
    alone = [decoding.greedy(mel) for mel in mels]
    started = decoding.begin([TranscriptionStart(mel) for mel in mels])
    outs = {seq: [token] for seq, token in started}
    peak = 0
    while any(out[-1] != eot for out in outs.values()):
        live = [seq for seq, out in outs.items() if out[-1] != eot]
        for seq, token in zip(live, decoding.advance(live), strict=True):
            outs[seq].append(token)
        peak = max(peak, decoding.blocks.num_blocks - decoding.blocks.num_free_blocks)
    together = [outs[seq][:-1] for seq, _ in started]
    assert together == alone
    # blocks were taken as the sequences grew: each holds only what its tokens need
    assert peak == sum(decoding.blocks.blocks_for(seq.num_tokens) for seq, _ in started)
    for seq, _ in started:
        decoding.release(seq)
    assert decoding.blocks.num_free_blocks == decoding.blocks.num_blocks
