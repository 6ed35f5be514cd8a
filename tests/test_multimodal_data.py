"""Multimodal data: the synthetic shapes and tones (determinism, held-out combinations, answers that
match what was drawn or synthesised, measured from the pixels and samples), the media SFT rows and
user media files with bad files counted."""

import numpy as np
import pytest
from scipy import ndimage

from open_r1_jax.data.synthetic import shapes, tones

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
    others = [shapes.example(4, 17, False, 32)["image"] for _ in range(1)] + [shapes.example(3, 18, False, 32)["image"]]
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
