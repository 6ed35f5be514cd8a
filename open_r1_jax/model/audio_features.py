"""Log-mel spectrogram of mono waveforms: the audio adapter's input path (``model/multimodal.py``).

Legend: B batch, S samples, N = n_fft, F frames, Q = N/2 + 1 frequency bins, M mel bands.

    waveform [B,S] -> zero-pad N/2 on both sides (centred frames, librosa's ``center=True`` with its
    default ``pad_mode="constant"``) -> frames of N samples every hop -> periodic Hann window
    -> |rfft|^2 (power 2) [B,F,Q] -> mel filters [Q,M] -> log(max(mel, floor)) [B,F,M]
    (``model.audio.frame_energy``: -> [log-mel - e, e] [B,F,M+1], e = logsumexp over the bands)

Frames: F = 1 + (S + 2*(N//2) - N) // hop (= 1 + S // hop for even N).

Mel filters: the **Slaney** mel scale (linear below 1 kHz, logarithmic above) with **area-normalised**
triangles (each filter scaled by 2 / its bandwidth in Hz), i.e. ``librosa.filters.mel(htk=False,
norm="slaney")``, librosa's default and the filters Whisper's frontend was built from. Area
normalisation keeps a wide high band from outweighing a narrow low one in the log features. HTK
filters (``htk=True``) differ only in the scale's formula; one kind is enough here.

The filters are computed in float64 numpy (cached per configuration) and enter the traced function
as a constant: they are not trained, checkpointed or exported. Checked against librosa in
tests/test_multimodal.py; ``torch_ref/multimodal.py`` computes the same features with ``torch.stft``
and its own filter code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_F_SP = 200.0 / 3  # Slaney scale: Hz per mel below the break
_MIN_LOG_HZ = 1000.0  # the break between the linear and the logarithmic part
_LOGSTEP = np.log(6.4) / 27.0  # mels per log-Hz above the break


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``hz_to_mel(htk=False)``)."""
    hz = np.asarray(hz, np.float64)
    linear = hz / _F_SP
    min_log_mel = _MIN_LOG_HZ / _F_SP
    log = min_log_mel + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, np.float64)
    min_log_mel = _MIN_LOG_HZ / _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - min_log_mel))
    return np.where(mel >= min_log_mel, log, _F_SP * mel)


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float = 0.0) -> np.ndarray:
    """-> [M,Q] float64 Slaney-normalised triangular filters (f_max 0 = sample_rate / 2)."""
    f_max = f_max or sample_rate / 2
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # [Q]
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # [M+2]
    width = np.diff(edges)  # [M+1]
    ramps = edges[:, None] - fft_hz[None, :]  # [M+2,Q]
    rising = -ramps[:-2] / width[:-1, None]  # [M,Q]
    falling = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)  # cached: shared by every caller
    return weights


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n, fftbins=True)``): the STFT convention,
    so that overlapping windows at hop N/2 add up to a constant."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def n_frames(n_samples: int, n_fft: int, hop: int) -> int:
    """Frames of a centred STFT of ``n_samples`` samples."""
    return 1 + (n_samples + 2 * (n_fft // 2) - n_fft) // hop


def log_mel(wav: jax.Array, filters: jax.Array, n_fft: int, hop: int, floor: float) -> jax.Array:
    """wav [B,S] float, filters [M,Q] -> log-mel [B,F,M] fp32 (see the module docstring)."""
    pad = n_fft // 2
    x = jnp.pad(wav.astype(jnp.float32), ((0, 0), (pad, pad)))  # [B,S+N]
    f = n_frames(wav.shape[1], n_fft, hop)
    idx = np.arange(f)[:, None] * hop + np.arange(n_fft)[None, :]  # [F,N] static gather
    frames = x[:, idx] * jnp.asarray(hann_window(n_fft), jnp.float32)  # [B,F,N]
    spec = jnp.fft.rfft(frames, axis=-1)  # [B,F,Q] complex
    power = jnp.square(spec.real) + jnp.square(spec.imag)  # |X|^2 without a sqrt and a square
    mel = jnp.einsum("bfq,mq->bfm", power, filters, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, floor))


def with_frame_energy(logmel: jax.Array) -> jax.Array:
    """log-mel [B,F,M] -> [B,F,M+1]: each frame's log-mel minus its log energy e (logsumexp over the
    bands, the log of the frame's total mel power), then e.

    Why: in raw log-mel a beep at 300 Hz and one at 1200 Hz light up different bands, so what the
    subsampler learns about when a sound starts and stops is learned once per pitch and does not
    carry to a pitch it was never trained with. Split into shape and energy, the energy track is the
    same at every pitch. ``benchmarks/adapter_probe.py`` (the adapter with linear heads on the demo's
    clips, 800 steps): held-out count accuracy 0.36 with raw log-mel, 0.99 with this (docs/multimodal.md)."""
    energy = jax.nn.logsumexp(logmel, axis=-1, keepdims=True)  # [B,F,1]
    return jnp.concatenate([logmel - energy, energy], axis=-1)
