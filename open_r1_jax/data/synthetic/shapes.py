"""Images of coloured shapes with a caption and questions: the multimodal demo's VQA data.

Two kinds of scene on a dark background (coordinates are fractions of the canvas, so a scene draws
at any resolution; Pillow draws it at 4x and shrinks it with a box filter, which antialiases edges):

    count  1-4 copies of one shape in one colour and size, each in its own quadrant (they never touch)
           questions: colour, shape, count
    pair   two shapes of different kinds and colours, one large and one small, one in each half
           questions: left, right, bigger, smaller (the answer is a shape name)

Held out (``synthetic.is_heldout``, seed-free): a count scene by (colour, shape, count), a pair scene
by (left colour, left shape, right colour, right shape, which side is bigger). A held-out image shows
a combination that no training image shows; every single colour, shape and count is still trained.
Colours get a small random jitter and the background a random dark grey, so that a colour is a region
of RGB space rather than one exact value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from open_r1_jax.data.synthetic import is_heldout

HELDOUT_MOD = 7
SUPERSAMPLE = 4
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 90, 235), "yellow": (235, 220, 50),
           "purple": (160, 60, 205), "white": (235, 235, 235)}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "cross")
NUMBERS = ("one", "two", "three", "four")
# question type -> (scene kind, question); answers are single words (``answers``)
QUESTIONS = {
    "colour": ("count", "What colour are the shapes?"),
    "shape": ("count", "What shape are they?"),
    "count": ("count", "How many shapes are there?"),
    "left": ("pair", "Which shape is on the left?"),
    "right": ("pair", "Which shape is on the right?"),
    "bigger": ("pair", "Which shape is bigger?"),
    "smaller": ("pair", "Which shape is smaller?"),
}
QUADRANTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))  # centres of the four cells


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # one of COLOURS
    x: float  # centre, fraction of the width (0 = left)
    y: float  # centre, fraction of the height (0 = top)
    size: float  # side of the bounding square, fraction of the canvas


@dataclass(frozen=True)
class Scene:
    kind: str  # "count" or "pair"
    shapes: tuple[Shape, ...]  # pair: (left, right)
    rgb: tuple[tuple[int, int, int], ...]  # the jittered colour of each shape
    background: int  # grey level

    @property
    def combination(self) -> tuple:
        """What the held-out split is decided on (see the module docstring)."""
        if self.kind == "count":
            s = self.shapes[0]
            return ("count", s.colour, s.kind, len(self.shapes))
        left, right = self.shapes
        return ("pair", left.colour, left.kind, right.colour, right.kind, left.size > right.size)

    def answers(self) -> dict[str, str]:
        """Question type -> the answer this scene gives it."""
        if self.kind == "count":
            s = self.shapes[0]
            return {"colour": s.colour, "shape": s.kind, "count": str(len(self.shapes))}
        left, right = self.shapes
        big, small = (left, right) if left.size > right.size else (right, left)
        return {"left": left.kind, "right": right.kind, "bigger": big.kind, "smaller": small.kind}

    @property
    def caption(self) -> str:
        if self.kind == "count":
            s, n = self.shapes[0], len(self.shapes)
            plural = "es" if s.kind.endswith("s") else "s"
            return f"{NUMBERS[n - 1]} {s.colour} {s.kind}{plural if n > 1 else ''}"
        left, right = self.shapes
        size = lambda s, o: "large" if s.size > o.size else "small"
        return (
            f"a {size(left, right)} {left.colour} {left.kind} on the left and a {size(right, left)} "
            f"{right.colour} {right.kind} on the right"
        )


def _jitter(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])


def _count_scene(rng: np.random.Generator, heldout: bool) -> Scene:
    while True:
        colour, kind, n = rng.choice(list(COLOURS)), rng.choice(SHAPES), int(rng.integers(1, 5))
        if is_heldout(("count", str(colour), str(kind), n), HELDOUT_MOD) == heldout:
            break
    size = float(rng.uniform(0.22, 0.34))  # of the canvas: a quadrant is 0.5, so copies never touch
    cells = rng.permutation(4)[:n]
    room = 0.25 - size / 2 - 0.02  # how far a centre may move inside its quadrant
    shapes = tuple(
        Shape(
            str(kind),
            str(colour),
            QUADRANTS[c][0] + rng.uniform(-room, room),
            QUADRANTS[c][1] + rng.uniform(-room, room),
            size,
        )  # fmt: skip
        for c in sorted(cells)
    )
    return Scene("count", shapes, tuple(_jitter(rng, s.colour) for s in shapes), int(rng.integers(0, 40)))


def _pair_scene(rng: np.random.Generator, heldout: bool) -> Scene:
    while True:
        kinds = rng.choice(SHAPES, 2, replace=False)
        colours = rng.choice(list(COLOURS), 2, replace=False)
        left_big = bool(rng.integers(2))
        combination = ("pair", str(colours[0]), str(kinds[0]), str(colours[1]), str(kinds[1]), left_big)
        if is_heldout(combination, HELDOUT_MOD) == heldout:
            break
    big, small = float(rng.uniform(0.36, 0.44)), float(rng.uniform(0.16, 0.22))
    sizes = (big, small) if left_big else (small, big)
    shapes = []
    for i, size in enumerate(sizes):
        room_x = 0.25 - size / 2 - 0.01
        x = 0.25 + 0.5 * i + rng.uniform(-room_x, room_x)
        y = rng.uniform(size / 2 + 0.02, 1 - size / 2 - 0.02)
        shapes.append(Shape(str(kinds[i]), str(colours[i]), float(x), float(y), size))
    return Scene("pair", tuple(shapes), tuple(_jitter(rng, s.colour) for s in shapes), int(rng.integers(0, 40)))


def sample_scene(rng: np.random.Generator, kind: str, heldout: bool) -> Scene:
    """A random scene of ``kind`` ("count" or "pair") from the training or the held-out split."""
    return (_count_scene if kind == "count" else _pair_scene)(rng, heldout)


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, rgb, side: int) -> None:
    cx, cy, r = s.x * side, s.y * side, s.size * side / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if s.kind == "circle":
        draw.ellipse(box, fill=rgb)
    elif s.kind == "square":
        draw.rectangle(box, fill=rgb)
    elif s.kind == "triangle":  # pointing up, base at the bottom of the box
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=rgb)
    elif s.kind == "cross":  # a plus sign, arms a third of the box wide
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=rgb)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=rgb)
    else:
        raise ValueError(f"unknown shape {s.kind!r}; known: {SHAPES}")


def draw(scene: Scene, size: int) -> np.ndarray:
    """The scene as an RGB image uint8 [size,size,3]."""
    side = size * SUPERSAMPLE
    img = Image.new("RGB", (side, side), (scene.background,) * 3)
    canvas = ImageDraw.Draw(img)
    for shape, rgb in zip(scene.shapes, scene.rgb):
        _draw_shape(canvas, shape, rgb, side)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX))


def rng_for(seed: int, index: int, heldout: bool) -> np.random.Generator:
    """The generator of example ``index``: random access, the same for any order of access."""
    return np.random.default_rng([seed, index, int(heldout), 1])


def example(seed: int, index: int, heldout: bool, size: int, qtype: str | None = None) -> dict:
    """Example ``index`` of a split: ``{"image" uint8 [size,size,3], "caption", "qtype", "question",
    "answer", "combination", "qa"}`` (``qa``: every question type of the scene -> (question, answer)).
    ``qtype`` None picks the question type uniformly (so a count scene,
    with 3 of the 7 types, is drawn 3/7 of the time)."""
    rng = rng_for(seed, index, heldout)
    qtype = qtype or str(rng.choice(list(QUESTIONS)))
    kind, question = QUESTIONS[qtype]
    scene = sample_scene(rng, kind, heldout)
    return {"image": draw(scene, size), "caption": scene.caption, "qtype": qtype, "question": question,
            "answer": scene.answers()[qtype], "combination": scene.combination,
            "qa": {t: (QUESTIONS[t][1], a) for t, a in scene.answers().items()}}  # fmt: skip
