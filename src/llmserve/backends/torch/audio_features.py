"""Whisper's front end: 16 kHz samples -> 80-bin log-mel spectrogram of 30 s windows.

The mel filter bank is Slaney's (librosa's default, which Whisper's ``mel_filters.npz`` holds):
linear below 1 kHz, logarithmic above, each triangle scaled to unit area.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480000
N_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3000 mel frames per window

_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The [n_mels, n_fft // 2 + 1] filter bank, float32."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_points = np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_points = mel_to_hz(mel_points)
    widths = np.diff(hz_points)  # [n_mels + 1]
    ramps = hz_points[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_freqs]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]  # unit area per triangle
    return weights.astype(np.float32)


def log_mel_spectrogram(samples: np.ndarray | torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """[n_samples] float audio at 16 kHz -> [n_mels, n_samples // 160] log-mel, scaled as Whisper
    expects (log10, floored 8 below the maximum, then (x + 4) / 4)."""
    audio = torch.as_tensor(samples, dtype=torch.float32)
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # the last frame overlaps the padding only
    mel = torch.from_numpy(mel_filters(n_mels)) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def chunk_features(samples: np.ndarray, n_mels: int = 80) -> list[tuple[float, float, torch.Tensor]]:
    """Split audio into 30 s windows, each padded with silence to exactly 30 s, as
    ``(start_seconds, end_seconds, [n_mels, 3000] log-mel)``. Empty audio gives one silent window."""
    samples = np.asarray(samples, dtype=np.float32)
    out = []
    for start in range(0, max(len(samples), 1), CHUNK_SAMPLES):
        piece = samples[start : start + CHUNK_SAMPLES]
        padded = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        padded[: len(piece)] = piece
        mel = log_mel_spectrogram(padded, n_mels)[:, :N_FRAMES]
        out.append((start / SAMPLE_RATE, (start + len(piece)) / SAMPLE_RATE, mel))
    return out
