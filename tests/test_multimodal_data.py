"""Multimodal data: the synthetic shapes and tones (determinism, held-out combinations, answers that
match what was drawn or synthesised, measured from the pixels and samples), the media SFT rows and
user media files with bad files counted."""

import io
import json

import numpy as np
import pytest
import soundfile
from micro import micro_config
from PIL import Image
from scipy import ndimage

from open_r1_jax.config import ConfigError
from open_r1_jax.data import media_files, multimodal
from open_r1_jax.data.chat import ChatTemplate
from open_r1_jax.data.instruct import InstructDataError, InstructReport
from open_r1_jax.data.synthetic import shapes, tones
from open_r1_jax.data.tokenizer import ByteTokenizer

# ----------------------------------------------------------------------------- shapes


def _components(image: np.ndarray):
    """Connected regions brighter than the background -> (mask, mean RGB) per region."""
    grey = image.astype(int)
    bg = np.median(grey[0, :, :], axis=0)  # the top row is background in every scene (shapes keep a margin)
    mask = np.abs(grey - bg).max(-1) > 60
    labels, n = ndimage.label(mask)
    return [(labels == i, grey[labels == i].mean(0)) for i in range(1, n + 1)]


def _colour_of(rgb) -> str:
    return min(shapes.COLOURS, key=lambda c: np.abs(np.array(shapes.COLOURS[c]) - rgb).sum())


def _shape_of(mask: np.ndarray) -> str:
    """Circle, square, triangle or cross from the region's fill of its bounding box and its rows."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill = box.mean()
    widths = box.sum(1)
    if fill > 0.9:
        return "square"
    if fill > 0.7:
        return "circle"
    h = len(widths)
    if widths[: h // 4].mean() < 0.5 * widths[-(h // 4) :].mean():  # narrow top, wide bottom
        return "triangle"
    return "cross"


def test_shapes_are_deterministic_by_seed():
    a, b = shapes.example(3, 17, False, 32), shapes.example(3, 17, False, 32)
    assert np.array_equal(a["image"], b["image"]) and a["question"] == b["question"] and a["answer"] == b["answer"]
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
    others = [shapes.example(4, 17, False, 32)["image"], shapes.example(3, 18, False, 32)["image"]]
    assert not any(np.array_equal(a["image"], o) for o in others)


def test_shapes_heldout_combinations_never_train():
    train = {shapes.example(0, i, False, 8)["combination"] for i in range(600)}
    held = {shapes.example(0, i, True, 8)["combination"] for i in range(300)}
    assert held and not train & held
    assert all(shapes.is_heldout(c, shapes.HELDOUT_MOD) for c in held)
    counts = [c for c in train if c[0] == "count"]
    # every single value is still trained: only its combination with the others is new
    assert {c[1] for c in counts} == set(shapes.COLOURS) and {c[2] for c in counts} == set(shapes.SHAPES)
    assert {c[3] for c in counts} == {1, 2, 3, 4}
    assert {shapes.example(0, i, True, 8)["qtype"] for i in range(100)} == set(shapes.QUESTIONS)


@pytest.mark.parametrize("heldout", [False, True])
def test_shapes_answers_match_the_pixels(heldout):
    """Each answer checked against the drawn image: regions counted, coloured, classified, located."""
    for i in range(60):
        qtype = list(shapes.QUESTIONS)[i % len(shapes.QUESTIONS)]
        ex = shapes.example(1, i, heldout, 64, qtype)
        regions = _components(ex["image"])
        if shapes.QUESTIONS[qtype][0] == "count":
            got = {"count": str(len(regions)), "colour": _colour_of(regions[0][1]), "shape": _shape_of(regions[0][0])}
            assert len({_colour_of(c) for _, c in regions}) == 1 and len({_shape_of(m) for m, _ in regions}) == 1
        else:
            assert len(regions) == 2, ex["caption"]
            left, right = sorted(regions, key=lambda r: np.nonzero(r[0])[1].mean())
            big, small = sorted(regions, key=lambda r: -r[0].sum())
            got = {"left": _shape_of(left[0]), "right": _shape_of(right[0]), "bigger": _shape_of(big[0]),
                   "smaller": _shape_of(small[0])}  # fmt: skip
        assert got[qtype] == ex["answer"], (i, ex["caption"], qtype)


def test_shapes_captions_name_what_is_drawn():
    ex = shapes.example(0, 5, False, 32, "count")
    n = int(ex["answer"])
    assert ex["caption"].startswith(shapes.NUMBERS[n - 1] + " ")
    assert "crosss" not in " ".join(shapes.example(0, i, False, 8, "count")["caption"] for i in range(100))


# ----------------------------------------------------------------------------- tones

SR = 8000


def _beeps(audio: np.ndarray):
    """(start, end) sample of each beep: runs of a smoothed envelope above a threshold."""
    env = ndimage.uniform_filter1d(np.abs(audio), 40)  # 5 ms
    loud = env > 0.05
    labels, n = ndimage.label(loud)
    return [tuple(np.nonzero(labels == i)[0][[0, -1]]) for i in range(1, n + 1)]


def _frequency(x: np.ndarray) -> float:
    """Hz of a tone segment from its zero crossings (two per period)."""
    crossings = np.count_nonzero(np.diff(np.signbit(x)))
    return crossings / 2 / (len(x) / SR)


def test_tones_are_deterministic_by_seed():
    a, b = tones.example(2, 9, False, SR), tones.example(2, 9, False, SR)
    assert np.array_equal(a["audio"], b["audio"]) and a["answer"] == b["answer"]
    assert a["audio"].shape == (SR,) and a["audio"].dtype == np.float32
    assert not np.array_equal(a["audio"], tones.example(3, 9, False, SR)["audio"])


def test_tones_heldout_combinations_never_train():
    train = {tones.example(0, i, False, SR)["combination"] for i in range(400)}
    held = {tones.example(0, i, True, SR)["combination"] for i in range(200)}
    assert held and not train & held
    assert {c[0] for c in train} == {"low", "high"} and {c[1] for c in train} == {1, 2, 3, 4}
    assert {c[2] for c in train} == set(tones.CONTOURS) and {c[3] for c in train} == set(tones.LENGTHS)


@pytest.mark.parametrize("heldout", [False, True])
def test_tones_answers_match_the_samples(heldout):
    """Beeps counted from the envelope, their length timed, pitch and glide from zero crossings."""
    for i in range(40):
        qtype = list(tones.QUESTIONS)[i % len(tones.QUESTIONS)]
        ex = tones.example(5, i, heldout, SR, qtype)
        beeps = _beeps(ex["audio"])
        s, e = beeps[0]
        seg = ex["audio"][s : e + 1]
        third = len(seg) // 3
        start, end = _frequency(seg[:third]), _frequency(seg[-third:])
        contour = "steady" if 0.85 < end / start < 1.15 else "rising" if end > start else "falling"
        got = {"count": str(len(beeps)), "pitch": "high" if _frequency(seg) > 700 else "low",
               "length": "long" if (e - s) / SR > 0.1 else "short", "contour": contour}  # fmt: skip
        assert got[qtype] == ex["answer"], (i, ex["caption"], qtype, got)


def test_tones_refuse_what_does_not_fit():
    clip = tones.sample_clip(np.random.default_rng(0), False)
    with pytest.raises(ValueError, match="sample_rate"):
        tones.synthesize(clip, 2000)


# ----------------------------------------------------------------------------- media rows (SFT data)

MEDIA = [
    "model.vision.enabled=true", "model.vision.image_size=16", "model.vision.patch_size=8", "model.vision.width=16",
    "model.vision.depth=1", "model.vision.n_heads=2", "model.vision.ffn_dim=32", "model.vision.projector_dim=32",
    "model.audio.enabled=true", "model.audio.sample_rate=4000", "model.audio.max_samples=4000",
    "model.audio.n_fft=128", "model.audio.hop_length=128", "model.audio.n_mels=16", "model.audio.width=16",
    "model.audio.depth=1", "model.audio.n_heads=2", "model.audio.ffn_dim=32", "model.audio.projector_dim=32",
    "train.stage=sft", "sft.demo=multimodal", "train.seq_len=56", "sft.demo_eval_examples=8",
]  # fmt: skip


def test_demo_rows_alternate_media_with_fixed_shapes_and_train_only_the_answer():
    cfg = micro_config(*MEDIA)
    tok = ByteTokenizer()
    rows = multimodal.MediaRows(multimodal.DemoExamples(cfg.model, 10, 0, False), tok, 56, cfg.model)
    for i in range(4):
        row, ex = rows[i], rows.examples[i]
        assert {k: v.shape for k, v in row.items()} == {
            "inputs": (56,), "targets": (56,), "loss_mask": (56,), "positions": (56,), "segment_ids": (56,),
            "image": (16, 16, 3), "has_image": (), "audio": (4000,), "has_audio": ()}  # fmt: skip
        assert bool(row["has_image"]) == (i % 2 == 0) and bool(row["has_audio"]) == (i % 2 == 1)
        assert row["image"].dtype == np.uint8 and (row["image"].any() == (i % 2 == 0))
        trained = row["targets"][row["loss_mask"] == 1]
        assert tok.decode(trained[:-1]) == ex.completion and trained[-1] == tok.eos_id  # the answer, then eos
        assert tok.decode(row["inputs"][row["segment_ids"] == 1]).startswith("Q: ")
        assert row["segment_ids"].sum() == len(tok.encode(ex.prompt + ex.completion))
    assert multimodal.longest_demo_row(tok) <= 56
    with pytest.raises(ConfigError, match="model.audio.max_samples"):
        multimodal.DemoExamples(micro_config(*MEDIA, "model.audio.max_samples=2000").model, 4, 0, False)


def _media_tree(tmp_path):
    """A folder of good, odd and bad media files and a JSONL naming them (line numbers in comments)."""
    d = tmp_path / "media"
    d.mkdir()
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(d / "wide.png")
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(d / "grey.png")  # converted to RGB
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(d / "rgba.png")  # converted to RGB
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    (d / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "noise.jpg").write_bytes(b"\x00not an image" * 10)
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1).astype(np.float32)
    soundfile.write(d / "stereo8k.wav", stereo, 8000)  # downmixed and resampled to 4 kHz
    soundfile.write(d / "mono4k.wav", stereo[:4000, 0], 4000)
    soundfile.write(d / "long.flac", np.zeros(6000, np.float32), 4000)  # cut to max_samples
    wav = (d / "mono4k.wav").read_bytes()
    (d / "cut.wav").write_bytes(wav[: len(wav) // 2])
    (d / "header.wav").write_bytes(wav[:30])
    lines = [
        {"image": "wide.png", "question": "What colour?", "answer": "grey"},  # 1
        {"image": "grey.png", "caption": "a grey square"},  # 2
        {"image": str(d / "rgba.png"), "question": "Q?", "answer": "black"},  # 3 (absolute path)
        {"image": "cut.png", "caption": "x"},  # 4 bad: truncated
        {"image": "noise.jpg", "caption": "x"},  # 5 bad: not an image
        {"image": "missing.png", "caption": "x"},  # 6 bad: missing
        {"audio": "stereo8k.wav", "transcript": "a tone"},  # 7
        {"audio": "mono4k.wav", "question": "High or low?", "answer": "low"},  # 8
        {"audio": "long.flac", "transcript": "silence"},  # 9
        {"audio": "cut.wav", "transcript": "x"},  # 10 bad: truncated
        {"audio": "header.wav", "transcript": "x"},  # 11 bad: no data
        {"prompt": "Say hi.", "completion": "hi"},  # 12 text only
        {"image": "wide.png"},  # 13 bad: no question
    ]
    path = d / "media.jsonl"  # paths are relative to its folder
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{not json\n")  # 14 bad
    return path


def test_media_files_are_read_converted_and_bad_ones_counted(tmp_path):
    cfg = micro_config(*MEDIA).model
    path = _media_tree(tmp_path)
    report = InstructReport()
    found = media_files.read_examples(path, ChatTemplate(), 0.5, report, cfg)
    assert [ex.where.rsplit(":", 1)[1] for ex in found] == ["1", "2", "3", "7", "8", "9", "12"]
    assert [b.split(": ")[0] for b in report.bad] == [f"{path}:{n}" for n in (4, 5, 6, 10, 11, 13, 14)]
    assert "truncated" in report.bad[3] and "no such file" in report.bad[2] and "not a readable image" in report.bad[1]
    assert report.media == {"images": 3, "audios": 3, "bad_image_file": 3, "bad_audio_file": 2, "image_converted": 2,
                            "image_resized": 1, "audio_downmixed": 1, "audio_resampled": 1, "audio_cut": 1}  # fmt: skip
    assert "3 bad_image_file" in report.summary()
    assert found[0].image.shape == (16, 16, 3) and found[0].image.dtype == np.uint8 and found[0].image.max() == 200
    assert found[1].image.shape == (16, 16, 3) and found[1].completion == "a grey square"
    assert found[1].prompt == multimodal.PROMPT.format(question=media_files.CAPTION_QUESTION)
    tone = found[3].audio  # 1 s of 440 Hz at 8 kHz stereo -> 4000 samples at 4 kHz, still 440 Hz
    assert tone.shape == (4000,) and abs(_frequency(tone) * 4000 / SR - 440) < 5
    assert found[5].audio.shape == (4000,) and found[6].image is None and found[6].audio is None
    with pytest.raises(InstructDataError, match=r"7 of 14 lines .* sft.max_bad_fraction = 0.2"):
        media_files.read_examples(path, ChatTemplate(), 0.2, InstructReport(), cfg)


def test_media_rows_of_files_mix_text_and_media_in_one_shape(tmp_path):
    cfg = micro_config(*MEDIA).model
    found = media_files.read_examples(_media_tree(tmp_path), ChatTemplate(), 0.5, InstructReport(), cfg)
    rows = multimodal.MediaRows(found, ByteTokenizer(), 56, cfg)
    batch = next(multimodal.eval_batches(rows, 7))
    assert batch["image"].shape == (7, 16, 16, 3) and batch["audio"].shape == (7, 4000)
    assert batch["has_image"].tolist() == [True, True, True, False, False, False, False]
    assert batch["has_audio"].tolist() == [False, False, False, True, True, True, False]
    assert not batch["audio"][:3].any() and not batch["image"][3:].any()


def test_demo_rows_with_several_questions_train_every_answer_of_one_scene():
    cfg = micro_config(*MEDIA)
    tok = ByteTokenizer()
    one = multimodal.DemoExamples(cfg.model, 8, 0, False)
    many = multimodal.DemoExamples(cfg.model, 8, 0, False, questions=4)
    need = multimodal.longest_demo_row(tok, 4)
    rows = multimodal.MediaRows(many, tok, need, cfg.model)
    for i in range(8):
        a, b = one[i], many[i]
        assert b.segments[:2] == a.segments[:2]  # the drawn question first, as evaluation asks it
        assert np.array_equal(a.image, b.image) if a.image is not None else np.array_equal(a.audio, b.audio)
        answers = [t for t, trained in b.segments if trained]
        questions = [t for t, trained in b.segments if not trained]
        # every question type of the scene once: 3 for a count scene, 4 for a pair scene or a clip
        assert len(set(questions)) == len(answers) == (3 if "How many shapes" in "".join(questions) else 4)
        row = rows[i]
        assert row["segment_ids"].sum() <= need and row["loss_mask"].sum() == sum(map(len, answers)) + 1
    assert multimodal.longest_demo_row(tok, 4) > multimodal.longest_demo_row(tok, 1)


def test_demo_image_rows_per_audio_row():
    cfg = micro_config(*MEDIA).model
    two = multimodal.DemoExamples(cfg, 12, 0, False, image_rows=2)
    kinds = ["image" if two[i].image is not None else "audio" for i in range(12)]
    assert kinds == ["image", "image", "audio"] * 4
    assert [two[i].where for i in (0, 1, 3, 2, 5)] == ["shapes:train:0", "shapes:train:1", "shapes:train:2",
                                                       "tones:train:0", "tones:train:1"]  # fmt: skip
    one = multimodal.DemoExamples(cfg, 4, 0, False)
    assert [one[i].where for i in range(4)] == ["shapes:train:0", "tones:train:0", "shapes:train:1", "tones:train:1"]


def test_demo_blind_share_leaves_the_media_out_of_some_rows_only():
    cfg = micro_config(*MEDIA).model
    blind = multimodal.DemoExamples(cfg, 400, 0, False, blind=0.25)
    sighted = multimodal.DemoExamples(cfg, 400, 0, False)
    out = [i for i in range(400) if blind[i].image is None and blind[i].audio is None]
    assert 70 < len(out) < 130 and all(blind[i].where.endswith(":blind") for i in out)
    assert all(blind[i].segments == sighted[i].segments for i in range(0, 400, 7))  # same questions and answers
