"""Question -> answer rows with an image and/or an audio clip: the SFT stage's data when the model has
an adapter (``model.vision.enabled`` / ``model.audio.enabled``).

An example is an ``instruct.Example`` (text segments, the trained ones being the answer) plus its
media. Each example is one row of ``train.seq_len`` tokens, right-padded, never packed with another:
the adapters' prefix belongs to a row's first document (``model/multimodal.py``), so a packed second
example would not see its own image. A batch [B,...] holds

    inputs, targets, loss_mask, positions, segment_ids   int32 [B,T]   (as the packed SFT batch)
    image uint8 [B,R,R,C], has_image bool [B]             when model.vision.enabled (R = image_size)
    audio float32 [B,S], has_audio bool [B]               when model.audio.enabled (S = max_samples)

A row without an image (or clip) holds zeros there and ``has_image`` False: the adapter's slots are
masked, so text-only, image and audio rows share one shape and one compilation.

The embedded demo (``sft.demo: multimodal``) draws examples on the fly from ``synthetic/shapes.py``
(when vision is on) and ``synthetic/tones.py`` (when audio is on), alternating rows when both are
(``sft.demo_image_rows`` image rows per audio row), in the prompt format ``PROMPT``; held-out rows
come from the held-out combinations. With
``sft.demo_questions`` > 1 a training row asks up to that many questions about its media, one after
the other (LLaVA's multi-turn rows): the drawn question first, as evaluation asks it, then other
question types of the same scene in random order, every answer trained. One forward pass of the
adapter then teaches several answers. ``sft.demo_blind`` leaves the media out of that share of
training rows (modality dropout): the model then learns each question's prior answer, so the blind
baseline of ``eval --tasks vqa,aqa`` is a fair guess from the question, not an untrained input.
"""

from __future__ import annotations

from dataclasses import dataclass

import grain
import numpy as np

from open_r1_jax.config import ConfigError, ModelConfig
from open_r1_jax.data.instruct import Example, InstructReport, encode_examples
from open_r1_jax.data.synthetic import shapes, tones

PROMPT = "Q: {question}\nA: "


@dataclass
class MediaExample(Example):
    image: np.ndarray | None = None  # uint8 [R,R,C] at model.vision.image_size
    audio: np.ndarray | None = None  # float32 [S] mono at model.audio.sample_rate
    qtype: str = ""  # question type (synthetic data), for per-type figures


def qa_example(question: str, answer: str, where: str = "", more=(), **media) -> MediaExample:
    """The answer (and the end-of-document token) trained, the question not. ``more``: further
    (question, answer) pairs about the same media, asked after it in the same row."""
    segments = [(PROMPT.format(question=question), False), (answer, True)]
    for q, a in more:
        segments += [("\n" + PROMPT.format(question=q), False), (a, True)]
    return MediaExample(segments, eos=True, where=where, **media)


def demo_seconds(cfg: ModelConfig) -> float:
    """Length of the demo's clips: the audio adapter's window, which must hold the longest clip."""
    seconds = cfg.audio.max_samples / cfg.audio.sample_rate
    if cfg.audio.enabled and seconds < 1.0:
        raise ConfigError(
            f"sft.demo 'multimodal': model.audio.max_samples ({cfg.audio.max_samples}) is under 1 s at "
            f"model.audio.sample_rate ({cfg.audio.sample_rate}); the beep clips need 1 s"
        )
    return seconds


class DemoExamples:
    """Random access over ``n`` synthetic examples of one split (see the module docstring)."""

    def __init__(
        self,
        cfg: ModelConfig,
        n: int,
        seed: int,
        heldout: bool,
        qtype=None,
        questions: int = 1,
        blind: float = 0.0,
        image_rows: int = 1,
    ):
        self.kinds = [k for k, on in (("image", cfg.vision.enabled), ("audio", cfg.audio.enabled)) if on]
        if not self.kinds:
            raise ConfigError("sft.demo 'multimodal' needs model.vision.enabled or model.audio.enabled")
        self.cfg, self.n, self.seed, self.heldout, self.qtype = cfg, n, seed, heldout, qtype
        self.questions = questions  # per row: the drawn question first, then others about the same media
        self.blind = blind  # share of rows whose media is left out (has_* False)
        self.seconds = demo_seconds(cfg)
        # the kinds of one cycle of rows: image_rows image rows, then an audio row (when both are on)
        self.cycle = ["image"] * image_rows + ["audio"] if len(self.kinds) == 2 else self.kinds

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> MediaExample:
        cycle, at = divmod(i, len(self.cycle))
        kind = self.cycle[at]
        index = cycle * self.cycle.count(kind) + self.cycle[:at].count(kind)  # the kind's own running index
        split = "heldout" if self.heldout else "train"
        if kind == "image":
            ex = shapes.example(self.seed, index, self.heldout, self.cfg.vision.image_size, self.qtype)
            media = {"image": ex["image"]}
        else:
            ex = tones.example(self.seed, index, self.heldout, self.cfg.audio.sample_rate, self.qtype, self.seconds)
            media = {"audio": ex["audio"]}
        where = f"{'shapes' if kind == 'image' else 'tones'}:{split}:{index}"
        others = [qa for t, qa in ex["qa"].items() if t != ex["qtype"]]
        order = np.random.default_rng([self.seed, i, 3]).permutation(len(others))
        more = [others[j] for j in order[: self.questions - 1]]
        if self.blind and np.random.default_rng([self.seed, i, 4]).random() < self.blind:
            media, where = {}, where + ":blind"
        return qa_example(ex["question"], ex["answer"], where, more, qtype=ex["qtype"], **media)


def longest_demo_row(tokenizer, questions: int = 1) -> int:
    """Tokens of the demo's longest row (``questions`` questions and answers about one scene or clip,
    end-of-document): the least train.seq_len. A bound: each question with its source's longest answer."""
    n = lambda text: len(tokenizer.encode(text))
    image_answer = max(n(a) for a in [*shapes.COLOURS, *shapes.SHAPES, "4"])
    audio_answer = max(n(a) for a in [*tones.REGISTERS, *tones.CONTOURS, *tones.LENGTHS, "4"])
    sources = [[n(PROMPT.format(question=q)) + image_answer for k, q in shapes.QUESTIONS.values() if k == kind]
               for kind in ("count", "pair")]  # fmt: skip
    sources.append([n(PROMPT.format(question=q)) + audio_answer for q in tones.QUESTIONS.values()])
    # later turns start with "\n"; + 1 for the end-of-document token, - 1 as the inputs leave out the last token
    return max(sum(sorted(turns)[::-1][:questions]) + (min(questions, len(turns)) - 1) * n("\n") for turns in sources)


def media_row(item: dict, ex: MediaExample, seq_len: int, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """A token item (``encode_examples``) and its example's media -> one fixed-shape row."""
    n = len(item["inputs"])
    row = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
    for k in ("inputs", "targets", "loss_mask"):
        row[k][:n] = item[k]
    row["positions"][:n] = np.arange(n)
    row["segment_ids"][:n] = 1
    if cfg.vision.enabled:
        r, c = cfg.vision.image_size, cfg.vision.channels
        row["image"] = np.zeros((r, r, c), np.uint8) if ex.image is None else ex.image
        row["has_image"] = np.asarray(ex.image is not None)
        if row["image"].shape != (r, r, c):
            raise ValueError(f"{ex.where}: image {row['image'].shape}; the rows need ({r}, {r}, {c})")
    if cfg.audio.enabled:
        row["audio"] = np.zeros(cfg.audio.max_samples, np.float32)
        if ex.audio is not None:
            clip = ex.audio[: cfg.audio.max_samples]
            row["audio"][: len(clip)] = clip
        row["has_audio"] = np.asarray(ex.audio is not None)
    return row


class MediaRows:
    """Random access over the rows of examples (a list, or ``DemoExamples`` drawn on access); a grain
    source. Examples are tokenised on access; a row too long is cut (counted by ``check_lengths``)."""

    def __init__(self, examples, tokenizer, seq_len: int, cfg: ModelConfig):
        self.examples, self.tokenizer, self.seq_len, self.cfg = examples, tokenizer, seq_len, cfg

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        ex = self.examples[i]
        items = encode_examples([ex], self.tokenizer, self.seq_len, InstructReport())
        if not items:
            raise ValueError(f"{ex.where}: no trained token within train.seq_len ({self.seq_len})")
        return media_row(items[0], ex, self.seq_len, self.cfg)


def keep_trainable(examples: list, tokenizer, seq_len: int, report: InstructReport) -> list:
    """The examples with a trained token within ``seq_len`` (the others counted in ``report.empty``;
    cut ones in ``report.truncated``), ``report`` filled as for packed SFT data."""
    kept = []
    for ex in examples:
        if encode_examples([ex], tokenizer, seq_len, report):
            kept.append(ex)
    return kept


def train_batches(rows: MediaRows, batch: int, seed: int, shard: int = 0, n_shards: int = 1):
    """Endless shuffled batches of this process's rows (``shard::n_shards``); checkpointable state."""
    ds = grain.MapDataset.source(rows)[shard::n_shards].seed(seed).shuffle().repeat()
    return iter(ds.batch(batch, drop_remainder=True).to_iter_dataset())


def eval_batches(rows: MediaRows, batch: int):
    """One ordered pass; the last batch may be short (the Trainer pads it with rows that count nothing)."""
    return iter(grain.MapDataset.source(rows).batch(batch).to_iter_dataset())
