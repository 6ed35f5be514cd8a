"""Near-duplicate detection: MinHash signatures of word n-gram shingles, banded LSH, verification.

Follows Broder (1997) MinHash and the LSH banding of Leskovec et al. (Mining of Massive Datasets, ch. 3),
with the parameters of datatrove's reference pipeline: normalised text, word 5-grams, 14 bands x 8 rows.

Signatures are computed for a batch of documents at once with numpy: every word is hashed with a
polynomial hash over its UTF-8 bytes (prefix sums in wrap-around uint64 arithmetic, so no Python loop
runs over words or shingles), shingles combine n word hashes, and the P permutations are the affine
maps ``a * h + b mod 2^32`` (a odd) of datasketch's ``affine32`` scheme, applied as one [P, S] product
and reduced per document with ``np.minimum.reduceat``. The LSH index is datasketch's ``MinHashLSH``
over ``LeanMinHash`` views of these signatures. Deliberate difference from plain LSH: a candidate
counts as a duplicate only when the signatures agree on at least ``threshold`` of their positions
(the estimated Jaccard), which removes band collisions of dissimilar documents.

``DatasketchDuplicateCounter`` is an independent second pass (datasketch's own SHA-1 hashing and
permutations, another seed) used to re-estimate the duplicate rate of the output.
"""

from __future__ import annotations

import unicodedata

import numpy as np

# Punctuation and symbols become spaces, digits become 0 (datatrove normalises numbers the same way).
_TABLE = {c: " " for c in range(0x3000) if unicodedata.category(chr(c))[0] in "PSZC"}
_TABLE.update({c: "0" for c in range(0x3000) if unicodedata.category(chr(c)) == "Nd"})


def normalize_words(text: str) -> list[str]:
    """Lower-cased words without punctuation, symbols or digit values."""
    return text.lower().translate(_TABLE).split()


def normalized_text(text: str) -> str:
    return " ".join(normalize_words(text))


def shingles(words: list[str], n: int) -> list[str]:
    """Word n-grams; a document of fewer than n words is one shingle."""
    if len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


_U64 = np.uint64
_P = _U64(0x100000001B3)  # odd, so invertible modulo 2^64
_P_INV = _U64(pow(0x100000001B3, -1, 1 << 64))
_Q = _U64(0x9E3779B97F4A7C15)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection that spreads every input bit)."""
    h = h ^ (h >> _U64(33))
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


class MinHasher:
    """``signatures(texts) -> uint32 [N, num_perm]``; equal texts give equal rows in every process."""

    def __init__(self, num_perm: int, ngram: int = 5, seed: int = 1, batch: int = 64):
        rng = np.random.RandomState(seed)
        self.num_perm, self.ngram, self.batch = num_perm, ngram, batch
        self.a = (rng.randint(0, 1 << 32, num_perm, dtype=np.uint64) | 1).astype(np.uint32)[:, None]
        self.b = rng.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)[:, None]
        self._pow = np.ones(0, np.uint64)
        self._pow_inv = np.ones(0, np.uint64)

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pow) < n:
            m = max(n, 2 * len(self._pow), 1 << 16)
            self._pow = np.cumprod(np.full(m, _P, np.uint64))  # P^(j+1)
            self._pow_inv = np.cumprod(np.full(m, _P_INV, np.uint64))  # P^-(j+1)
        return self._pow[:n], self._pow_inv[:n]

    def _shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (uint32 hash of every shingle [S], shingles per document [N])."""
        n = self.ngram
        lines, n_words = [], np.empty(len(texts), np.int64)
        for i, t in enumerate(texts):
            words = normalize_words(t)
            if len(words) < n:  # one shingle: the words padded with empty words
                words = words + [""] * (n - len(words))
            lines.append(" ".join(words))
            n_words[i] = len(words)
        blob = np.frombuffer((" ".join(lines) + " ").encode("utf-8"), np.uint8)
        p_pow, p_inv = self._powers(len(blob))
        # prefix[k] = sum_{j<k} byte_j * P^-(j+1); a word [s, e) hashes to P^e * (prefix[e] - prefix[s])
        # = sum_j byte_j * P^(e-1-j), a polynomial hash of its bytes (wrap-around uint64 arithmetic).
        prefix = np.zeros(len(blob) + 1, np.uint64)
        np.cumsum(blob * p_inv, out=prefix[1:])
        ends = np.flatnonzero(blob == 0x20)
        starts = np.concatenate([[0], ends[:-1] + 1])
        word = _fmix64((prefix[ends] - prefix[starts]) * p_pow[ends])
        n_sh = len(word) - n + 1
        gram = word[:n_sh].copy()
        for k in range(1, n):
            gram *= _Q
            gram += word[k : k + n_sh]
        per_doc = n_words - n + 1
        first = np.concatenate([[0], np.cumsum(n_words)[:-1]])
        keep = np.repeat(first - np.concatenate([[0], np.cumsum(per_doc)[:-1]]), per_doc) + np.arange(per_doc.sum())
        return (_fmix64(gram[keep]) >> _U64(32)).astype(np.uint32), per_doc

    def signatures(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.num_perm), np.uint32)
        for i in range(0, len(texts), self.batch):
            h, per_doc = self._shingle_hashes(texts[i : i + self.batch])
            perm = self.a * h[None, :]  # [P, S], wraps modulo 2^32
            perm += self.b
            offsets = np.concatenate([[0], np.cumsum(per_doc)[:-1]])
            out[i : i + len(per_doc)] = np.minimum.reduceat(perm, offsets, axis=1).T
        return out


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


class NearDuplicateIndex:
    """Banded LSH (datasketch ``MinHashLSH``) over signatures, with verification of candidates."""

    def __init__(self, bands: int, rows: int, threshold: float, seed: int = 1):
        from datasketch import MinHashLSH

        self.num_perm, self.threshold, self.seed = bands * rows, threshold, seed
        self.lsh = MinHashLSH(num_perm=self.num_perm, params=(bands, rows))
        self.sigs: list[np.ndarray] = []
        self.names: list[str] = []

    def _lean(self, sig: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")

    def find(self, sig: np.ndarray) -> tuple[str, float] | None:
        """The best earlier document whose estimated Jaccard with ``sig`` is >= threshold, or None."""
        best = None
        for key in self.lsh.query(self._lean(sig)):
            j = estimated_jaccard(sig, self.sigs[key])
            if j >= self.threshold and (best is None or j > best[1]):
                best = (self.names[key], j)
        return best

    def add(self, name: str, sig: np.ndarray) -> None:
        self.lsh.insert(len(self.sigs), self._lean(sig))
        self.sigs.append(sig)
        self.names.append(name)

    def check_and_add(self, name: str, sig: np.ndarray) -> tuple[str, float] | None:
        """Duplicate of an earlier document -> (its name, estimated Jaccard); else index it -> None."""
        dup = self.find(sig)
        if dup is None:
            self.add(name, sig)
        return dup


class DatasketchDuplicateCounter:
    """An independent MinHash pass: datasketch's SHA-1 hashing and permutations (another seed).

    A text counts as a duplicate when an earlier text found through the LSH index has an estimated
    Jaccard >= ``threshold``; ``at`` also counts those at the stricter ``levels``."""

    def __init__(
        self, bands: int, rows: int, ngram: int, threshold: float, seed: int, levels: tuple[float, ...] = (0.8, 0.9)
    ):
        from datasketch import LeanMinHash, MinHash, MinHashLSH

        self.lean, self.ngram, self.threshold = LeanMinHash, ngram, threshold
        self.template = MinHash(num_perm=bands * rows, seed=seed)
        self.lsh = MinHashLSH(num_perm=bands * rows, params=(bands, rows))
        self.sketches: list = []
        self.docs = self.duplicates = 0
        self.at = {level: 0 for level in levels}

    def add(self, texts: list[str]) -> int:
        """Index ``texts``; -> how many of them duplicate an earlier text."""
        found = 0
        for text in texts:
            m = self.template.copy()
            m.update_batch([s.encode("utf-8") for s in shingles(normalize_words(text), self.ngram)])
            best = max((m.jaccard(self.sketches[k]) for k in self.lsh.query(m)), default=0.0)
            found += best >= self.threshold
            for level in self.at:
                self.at[level] += best >= level
            m = self.lean(m)  # drops the permutation arrays
            self.lsh.insert(len(self.sketches), m)
            self.sketches.append(m)
        self.docs += len(texts)
        self.duplicates += found
        return found

    @property
    def rate(self) -> float:
        return self.duplicates / self.docs if self.docs else 0.0

    def rates_at(self) -> dict[str, float]:
        return {str(level): (n / self.docs if self.docs else 0.0) for level, n in self.at.items()}
