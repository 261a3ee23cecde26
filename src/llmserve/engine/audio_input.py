"""Uploaded audio files -> 16 kHz mono float32 samples.

WAV (integer PCM or float) is read here with numpy; every other container (FLAC, MP3, OGG, WEBM,
M4A, ...) goes through ``ffmpeg`` when it is installed. Anything that cannot be decoded is an
InvalidRequestError (400).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile

import numpy as np

from llmserve.errors import InvalidRequestError

SAMPLE_RATE = 16000
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def decode_audio(data: bytes, filename: str = "audio") -> np.ndarray:
    """Decode an uploaded file to 16 kHz mono float32 in [-1, 1]."""
    if not data:
        raise InvalidRequestError("The audio file is empty.", param="file")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        samples, rate = read_wav(data)
        return resample(samples, rate, SAMPLE_RATE)
    return _ffmpeg(data, filename)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A RIFF/WAVE file's samples (mono float32, channels averaged) and its sample rate."""
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk == b"fmt " and len(body) >= 16:
            fmt = struct.unpack("<HHIIHH", body[:16])
            if fmt[0] == _EXTENSIBLE and len(body) >= 26:
                fmt = (struct.unpack("<H", body[24:26])[0], *fmt[1:])
        elif chunk == b"data":
            payload = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise InvalidRequestError("The WAV file has no fmt or data chunk.", param="file")
    tag, channels, rate, _, _, bits = fmt
    if channels < 1 or rate < 1000:
        raise InvalidRequestError(f"The WAV file has {channels} channels at {rate} Hz.", param="file")
    width = bits // 8
    usable = len(payload) - len(payload) % (width * channels or 1)
    raw = payload[:usable]
    if tag == _PCM and bits == 8:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif tag == _PCM and bits in (16, 32):
        samples = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(2 ** (bits - 1))
    elif tag == _PCM and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)).astype(np.float32)
    elif tag == _FLOAT and bits in (32, 64):
        samples = np.frombuffer(raw, f"<f{width}").astype(np.float32)
    else:
        raise InvalidRequestError(f"Unsupported WAV encoding (format {tag}, {bits} bits).", param="file")
    return samples.reshape(-1, channels).mean(axis=1), rate


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling in the frequency domain (the spectrum cut or zero-padded)."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate == target or len(samples) == 0:
        return samples
    n_out = max(1, round(len(samples) * target / rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = n_out // 2 + 1
    if len(spectrum) >= keep:
        spectrum = spectrum[:keep]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(keep - len(spectrum), spectrum.dtype)])
    return (np.fft.irfft(spectrum, n_out) * (n_out / len(samples))).astype(np.float32)


def _ffmpeg(data: bytes, filename: str) -> np.ndarray:
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise InvalidRequestError(
            "Only WAV files can be decoded on this server (ffmpeg is not installed).", param="file"
        )
    # A file, not a pipe: MP4/M4A keep their index at the end, which ffmpeg must seek to.
    with tempfile.NamedTemporaryFile(suffix=_suffix(filename)) as f:
        f.write(data)
        f.flush()
        cmd = [binary, "-nostdin", "-v", "error", "-i", f.name, "-f", "f32le", "-ac", "1"]
        cmd += ["-ar", str(SAMPLE_RATE), "pipe:1"]
        result = subprocess.run(cmd, capture_output=True, timeout=300)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown format"]
        raise InvalidRequestError(f"The audio file could not be decoded: {reason[0]}", param="file")
    return np.frombuffer(result.stdout, "<f4").copy()


def _suffix(filename: str) -> str:
    dot = filename.rfind(".")
    ext = filename[dot:] if dot > 0 else ""
    return ext if ext[1:].isalnum() and len(ext) <= 6 else ""
