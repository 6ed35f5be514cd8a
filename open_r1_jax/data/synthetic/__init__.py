"""Synthetic data, generated deterministically: demos and tests, nothing downloaded.

Text domains (``data.sources: ["synthetic:finance"]``, also in ``ppl.files``): ``finance.py``.
Held-out documents are chosen by the name hash, as for files (``sources.split_source``).

Media with questions and answers (the multimodal demo, ``configs/multimodal_tiny.yaml``):
``shapes.py`` (images of coloured shapes) and ``tones.py`` (clips of beeps). Their held-out split is
by attribute combination (``is_heldout``): a held-out example's combination never occurs in training,
for any seed, as ``data/arith.py`` holds out problems.
"""

from __future__ import annotations

import zlib

from open_r1_jax.data.synthetic.finance import finance_documents

PREFIX = "synthetic:"
DOMAINS = {"finance": finance_documents}


def is_synthetic(source: str) -> bool:
    return source.startswith(PREFIX)


def documents(source: str, what: str = "data.sources"):
    """``synthetic:NAME`` -> that domain's documents."""
    name = source[len(PREFIX) :]
    if name not in DOMAINS:
        raise ValueError(f"{what}: unknown synthetic domain {source!r}; known: {[PREFIX + d for d in DOMAINS]}")
    return DOMAINS[name]()


def is_heldout(combination: tuple, mod: int) -> bool:
    """A combination of attributes is held out when crc32 of its text is 0 mod ``mod`` (seed-free)."""
    return zlib.crc32(repr(combination).encode()) % mod == 0
