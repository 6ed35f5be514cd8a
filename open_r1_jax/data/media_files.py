"""User media files -> the arrays the adapters read; JSONL examples that name them.

Images: any file Pillow opens, converted to the model's channels (``RGB``, or ``L`` when
``model.vision.channels`` is 1; palette, grey or alpha images are converted, counted as
``image_converted``), resized to ``image_size`` x ``image_size`` (Pillow's bilinear filter, which
widens with the shrink factor, i.e. antialiased; a non-square image is squashed, not cropped) ->
uint8 [R,R,C].

Audio: any file soundfile reads (WAV, FLAC, OGG); several channels are averaged to mono
(``audio_downmixed``); another sample rate is resampled to ``model.audio.sample_rate`` with
``scipy.signal.resample_poly`` (polyphase, anti-aliased; ``audio_resampled``); a clip longer than
``max_samples`` is cut (``audio_cut``; a shorter one is zero-padded in its row) -> float32 [S].

A missing, unreadable, corrupt or truncated file (a WAV cut short is found by libsndfile's own
header check, which it logs and ``soundfile.info(verbose=True)`` shows) raises ``MediaError`` with the reason; readers
count it as a bad record, reported with ``file:line``, and go on.

JSONL layouts (media paths relative to the JSONL file's folder, or absolute), one example a line:

    {"image": path, "caption": str}                  trained as  Q: Describe the image.  A: caption
    {"image": path, "question": str, "answer": str}  (VQA)
    {"audio": path, "transcript": str}               trained as  Q: Transcribe the audio.  A: transcript
    {"audio": path, "question": str, "answer": str}
    any text-only layout of ``data/instruct.py``     (a row with no media)

``prepare`` (``MediaRecords``) reads the same media records of a mixture source's JSONL files into
documents that keep their arrays: the text is the example's segments joined ("Q: Describe the
image.\nA: a red circle"), stored with ``image`` / ``audio`` beside its tokens (``data/shards.py``),
loaded as above with the config's ``model.vision`` / ``model.audio`` settings (which the model that
trains on the shards must share; the manifest records them). ``synthetic:shapes[:N]`` and
``synthetic:tones[:N]`` draw N (default 2000) training examples of the demo's generators (seed 0, the
training combinations only), each a caption followed by every question of its scene or clip.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, UnidentifiedImageError

from open_r1_jax.config import AudioConfig, ModelConfig, VisionConfig
from open_r1_jax.data.instruct import InstructDataError, InstructReport, parse_example
from open_r1_jax.data.jsonl import read_jsonl
from open_r1_jax.data.multimodal import MediaExample, demo_seconds, qa_example
from open_r1_jax.data.synthetic import DOMAINS, PREFIX, shapes, tones

CAPTION_QUESTION = "Describe the image."
TRANSCRIPT_QUESTION = "Transcribe the audio."


class MediaError(ValueError):
    """A media file that cannot be used; the message says why."""


def load_image(path: str | Path, cfg: VisionConfig, events: Counter | None = None) -> np.ndarray:
    """An image file -> uint8 [R,R,C] (see the module docstring); ``events`` counts conversions."""
    events = Counter() if events is None else events
    mode = "L" if cfg.channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated or corrupt file fails here, not later
            if img.mode != mode:
                events["image_converted"] += 1
                img = img.convert(mode)
            if img.size != (cfg.image_size, cfg.image_size):
                events["image_resized"] += 1
                img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, np.uint8)
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # Pillow's decoders raise these
        raise MediaError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if cfg.channels not in (1, 3):
        raise MediaError(f"{path}: model.vision.channels {cfg.channels}; image files give 1 (grey) or 3 (RGB)")
    return arr.reshape(cfg.image_size, cfg.image_size, cfg.channels)


def load_audio(path: str | Path, cfg: AudioConfig, events: Counter | None = None) -> np.ndarray:
    """An audio file -> float32 mono [<= max_samples] at ``cfg.sample_rate`` (see the module docstring)."""
    events = Counter() if events is None else events
    if not Path(path).is_file():
        raise MediaError(f"{path}: no such file")
    try:
        # libsndfile reads a cut file up to where it ends; its log says so ("data : N (should be M)")
        if re.search(r"^data\s*:.*should be", soundfile.info(str(path), verbose=True).extra_info, re.M):
            raise MediaError(f"{path}: truncated (its data chunk is shorter than its header says)")
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [N,channels]
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
        if isinstance(e, MediaError):
            raise
        raise MediaError(f"{path}: not a readable audio file ({e})") from None
    if data.shape[0] == 0:
        raise MediaError(f"{path}: no samples (empty or truncated file)")
    if not np.all(np.isfinite(data)):
        raise MediaError(f"{path}: non-finite samples")
    if data.shape[1] > 1:
        events["audio_downmixed"] += 1
    wav = data.mean(axis=1)
    if rate != cfg.sample_rate:
        events["audio_resampled"] += 1
        from scipy.signal import resample_poly  # here: importing scipy.signal costs every run ~1.5 s

        g = math.gcd(rate, cfg.sample_rate)
        wav = resample_poly(wav, cfg.sample_rate // g, rate // g).astype(np.float32)
    if len(wav) > cfg.max_samples:
        events["audio_cut"] += 1
        wav = wav[: cfg.max_samples]
    return wav.astype(np.float32)


def _media_example(rec: dict, base: Path, cfg: ModelConfig, events: Counter, where: str) -> MediaExample | str:
    """A record naming an image or audio file -> MediaExample, or why it cannot be used."""
    kind = "image" if "image" in rec else "audio"
    other = {"image": "caption", "audio": "transcript"}[kind]
    if "audio" in rec and "image" in rec:
        return "a record names both 'image' and 'audio'; give one per line"
    if not (cfg.vision if kind == "image" else cfg.audio).enabled:
        return f"an {kind} record, but model.{'vision' if kind == 'image' else 'audio'}.enabled is false"
    if isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str):
        question, answer = rec["question"], rec["answer"]
    elif isinstance(rec.get(other), str):
        question, answer = (CAPTION_QUESTION if kind == "image" else TRANSCRIPT_QUESTION), rec[other]
    else:
        return f"an {kind} record needs string fields 'question' and 'answer', or '{other}'"
    if not isinstance(rec[kind], str):
        return f"'{kind}' must be a file path (a string)"
    path = Path(rec[kind]) if Path(rec[kind]).is_absolute() else base / rec[kind]
    try:
        media = load_image(path, cfg.vision, events) if kind == "image" else load_audio(path, cfg.audio, events)
    except MediaError as e:
        events[f"bad_{kind}_file"] += 1
        return str(e)
    events[f"{kind}s"] += 1
    return qa_example(question, answer, where, **{kind: media})


def read_examples(path, template, max_bad_fraction: float, report: InstructReport, cfg: ModelConfig) -> list:
    """Examples of a JSONL file (see the module docstring); malformed lines and bad media files are
    counted in ``report.bad`` as ``file:line: why`` and the run fails only above ``max_bad_fraction``."""
    path, events = Path(path), Counter()

    def parse(rec, where: str) -> MediaExample | str:
        if isinstance(rec, dict) and ("image" in rec or "audio" in rec):
            return _media_example(rec, path.parent, cfg, events, where)
        got = parse_example(rec, template, where)
        return got if isinstance(got, str) else MediaExample(got.segments, got.eos, got.where)

    try:
        return read_jsonl(
            path,
            parse,
            report.bad,
            what="sft: data file",
            error=InstructDataError,
            max_bad_fraction=max_bad_fraction,
            setting="sft.max_bad_fraction",
            bad_means="malformed or name bad media files",
        )
    finally:  # the media events of the lines read, also when the file is refused
        for event, n in events.items():
            report.media[event] = report.media.get(event, 0) + n


# ----------------------------------------------------------------------------- prepare's media documents

SYNTHETIC_MEDIA = ("shapes", "tones")
SYNTHETIC_MEDIA_EXAMPLES = 2000  # synthetic:shapes / synthetic:tones without a count


def media_settings(cfg: ModelConfig) -> dict:
    """The settings prepared media arrays depend on (the manifest's ``media``; the model must match)."""
    v, a = cfg.vision, cfg.audio
    return {
        "image_size": v.image_size,
        "channels": v.channels,
        "sample_rate": a.sample_rate,
        "max_samples": a.max_samples,
    }


class MediaRecords:
    """``(record, folder, where) -> (text, arrays)`` or why not, for ``readers.read_source``: loads the
    file a JSONL media record names with ``cfg``'s settings (enabled or not: these are the shards'
    format); ``events`` counts conversions, resizes, resamples and bad files."""

    def __init__(self, cfg: ModelConfig):
        on = lambda c: dataclasses.replace(c, enabled=True)  # noqa: E731
        self.cfg = dataclasses.replace(cfg, vision=on(cfg.vision), audio=on(cfg.audio))
        self.events: Counter = Counter()

    def __call__(self, rec: dict, base: Path, where: str) -> tuple[str, dict] | str:
        got = _media_example(rec, base, self.cfg, self.events, where)
        return got if isinstance(got, str) else document(got)


def no_media(rec: dict, base: Path, where: str) -> str:
    return "a media record, but this reader loads no media"


def document(ex: MediaExample) -> tuple[str, dict]:
    """An example -> (its text, its arrays): what ``prepare`` stores."""
    arrays = {k: v for k, v in (("image", ex.image), ("audio", ex.audio)) if v is not None}
    return "".join(text for text, _ in ex.segments), arrays


def check_synthetic(spec: str, key: str) -> str:
    """``synthetic:NAME[:N]`` -> itself, or a ``FileNotFoundError`` naming ``key`` and the known names."""
    name, _, n = spec[len(PREFIX) :].partition(":")
    known = [*DOMAINS, *SYNTHETIC_MEDIA]
    if name not in known or (n and (name not in SYNTHETIC_MEDIA or not n.isdigit() or int(n) < 1)):
        raise FileNotFoundError(
            f"{key}: {spec!r} is not a synthetic source; known: {[PREFIX + d for d in known]} "
            f"(media ones take a count, e.g. {PREFIX}shapes:500)"
        )
    return spec


def synthetic_documents(spec: str, media: MediaRecords | None) -> Iterator[tuple[str, str, dict | None]]:
    """``synthetic:NAME[:N]`` -> (where, text, arrays or None) of each document."""
    name, _, n = spec[len(PREFIX) :].partition(":")
    if name in DOMAINS:
        for d in DOMAINS[name]():
            yield d.name, d.text, None
        return
    if media is None:
        raise ValueError(f"{spec}: synthetic media need a media reader (model settings)")
    cfg = media.cfg
    for i in range(int(n or SYNTHETIC_MEDIA_EXAMPLES)):
        if name == "shapes":
            ex = shapes.example(0, i, False, cfg.vision.image_size)
            image = ex["image"] if cfg.vision.channels == 3 else ex["image"].mean(-1, keepdims=True).astype(np.uint8)
            arrays = {"image": image}
        else:
            ex = tones.example(0, i, False, cfg.audio.sample_rate, seconds=demo_seconds(cfg))
            arrays = {"audio": ex["audio"]}
        caption_q = CAPTION_QUESTION if name == "shapes" else "Describe the sound."
        example = qa_example(caption_q, ex["caption"], more=list(ex["qa"].values()))
        yield f"{PREFIX}{name}:{i}", document(example)[0], arrays
