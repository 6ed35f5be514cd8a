"""Clips of beeps with a caption and questions: the multimodal demo's audio Q/A data.

A clip is 1-4 beeps of one pitch register, contour and length, synthesised with numpy:

    pitch    low (250-400 Hz) or high (1000-1600 Hz): the beep's geometric-mean frequency
    count    1-4 beeps, separated by 60-90 ms of silence, starting anywhere the clip leaves room
    contour  steady, rising or falling: an exponential glide over the beep, by a factor of 1.5
    length   short (50-70 ms) or long (130-170 ms) beeps

Each beep is a sine of the gliding frequency (phase = the running sum of the frequency) with 5 ms
raised-cosine ramps (no clicks), a random amplitude 0.3-0.7; the clip gets white noise (std 0.005).
Questions: pitch, count, contour, length, each answered with one word.

Held out (``synthetic.is_heldout``, seed-free): by (pitch, count, contour, length), 48 combinations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from open_r1_jax.data.synthetic import is_heldout

HELDOUT_MOD = 7
REGISTERS = {"low": (250.0, 400.0), "high": (1000.0, 1600.0)}  # Hz of the beep's mean frequency
LENGTHS = {"short": (0.05, 0.07), "long": (0.13, 0.17)}  # seconds
CONTOURS = {"steady": 1.0, "rising": 1.5, "falling": 1 / 1.5}  # end / start frequency
GAP = (0.06, 0.09)  # seconds of silence between beeps
RAMP = 0.005  # seconds of the raised-cosine fade in and out
NUMBERS = ("one", "two", "three", "four")
QUESTIONS = {
    "pitch": "Is the pitch high or low?",
    "count": "How many beeps are there?",
    "contour": "Is the pitch rising, falling or steady?",
    "length": "Are the beeps short or long?",
}


@dataclass(frozen=True)
class Clip:
    pitch: str  # low / high
    contour: str  # steady / rising / falling
    length: str  # short / long
    frequency: float  # Hz, geometric mean of the glide
    onsets: tuple[float, ...]  # seconds; one per beep
    duration: float  # seconds of each beep
    amplitude: float

    @property
    def combination(self) -> tuple:
        return (self.pitch, len(self.onsets), self.contour, self.length)

    def answers(self) -> dict[str, str]:
        return {"pitch": self.pitch, "count": str(len(self.onsets)), "contour": self.contour, "length": self.length}

    @property
    def caption(self) -> str:
        n = len(self.onsets)
        return f"{NUMBERS[n - 1]} {self.length} {self.pitch} beep{'s' if n > 1 else ''}, {self.contour}"


def sample_clip(rng: np.random.Generator, heldout: bool, seconds: float = 1.0) -> Clip:
    """A random clip of ``seconds`` from the training or the held-out split."""
    while True:
        pitch, contour, length = rng.choice(list(REGISTERS)), rng.choice(list(CONTOURS)), rng.choice(list(LENGTHS))
        n = int(rng.integers(1, 5))
        if is_heldout((str(pitch), n, str(contour), str(length)), HELDOUT_MOD) == heldout:
            break
    duration = float(rng.uniform(*LENGTHS[length]))
    gaps = rng.uniform(*GAP, size=n - 1)
    total = n * duration + float(gaps.sum())
    if total > seconds:
        raise ValueError(f"a clip of {seconds} s cannot hold {n} {length} beeps ({total:.2f} s); use >= 1 s")
    start = float(rng.uniform(0, seconds - total))
    onsets = start + np.arange(n) * duration + np.concatenate([[0.0], np.cumsum(gaps)])
    lo, hi = REGISTERS[pitch]
    frequency = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return Clip(str(pitch), str(contour), str(length), frequency, tuple(float(o) for o in onsets), duration,
                float(rng.uniform(0.3, 0.7)))  # fmt: skip


def synthesize(clip: Clip, sample_rate: int, seconds: float = 1.0, rng: np.random.Generator | None = None):
    """The clip as a mono waveform float32 [seconds * sample_rate] (noise from ``rng``; None = none)."""
    out = np.zeros(int(round(seconds * sample_rate)), np.float64)
    n = int(round(clip.duration * sample_rate))
    ratio = CONTOURS[clip.contour]
    t = np.arange(n) / sample_rate
    freq = clip.frequency / np.sqrt(ratio) * ratio ** (t / clip.duration)  # [n] Hz, geometric mean = frequency
    if freq.max() >= sample_rate / 2:
        raise ValueError(f"sample_rate {sample_rate} Hz cannot hold {freq.max():.0f} Hz beeps; use >= 4000 Hz")
    tone = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
    ramp = min(int(RAMP * sample_rate), n // 2)
    env = np.ones(n)
    env[:ramp] = env[n - ramp :][::-1] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    for onset in clip.onsets:
        s = int(round(onset * sample_rate))
        m = min(n, len(out) - s)  # rounding may take the last beep a sample past the end
        out[s : s + m] += clip.amplitude * env[:m] * tone[:m]
    if rng is not None:
        out += rng.normal(0.0, 0.005, out.shape)
    return out.astype(np.float32)


def rng_for(seed: int, index: int, heldout: bool) -> np.random.Generator:
    """The generator of example ``index``: random access, the same for any order of access."""
    return np.random.default_rng([seed, index, int(heldout), 2])


def example(seed: int, index: int, heldout: bool, sample_rate: int, qtype: str | None = None,
            seconds: float = 1.0) -> dict:  # fmt: skip
    """Example ``index`` of a split: ``{"audio" float32 [seconds * sample_rate], "caption", "qtype",
    "question", "answer", "combination", "qa"}`` (every question type -> (question, answer));
    ``qtype`` None picks the question type uniformly."""
    rng = rng_for(seed, index, heldout)
    qtype = qtype or str(rng.choice(list(QUESTIONS)))
    clip = sample_clip(rng, heldout, seconds)
    return {"audio": synthesize(clip, sample_rate, seconds, rng), "caption": clip.caption, "qtype": qtype,
            "question": QUESTIONS[qtype], "answer": clip.answers()[qtype], "combination": clip.combination,
            "qa": {t: (QUESTIONS[t], a) for t, a in clip.answers().items()}}  # fmt: skip
