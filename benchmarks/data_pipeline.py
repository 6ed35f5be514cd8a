"""Data pipeline figures, side by side in one run.

(a) MinHash signatures per second of 2 KB documents: ours (``open_r1_jax.data.minhash.MinHasher``, numpy
    over a batch) versus datasketch's per-document ``MinHash.update`` loop (and ``MinHash.bulk``, for
    reference), same normalisation, word 5-grams and 14 x 8 = 112 permutations; then near-duplicate
    recall of planted pairs at Jaccard ~0.9 and ~0.8 through the LSH index of ``prepare``, and false
    positives: flagged pairs whose exact Jaccard is below 0.5. Targets: >= 5x the loop, recall >= 0.95
    at 0.9, no false positive below 0.5.
(b) Tokens per second delivered by the prepared-shard pipeline (ArrayRecord -> chunks -> mix -> pack ->
    batch, one process, no prefetch workers) versus tokens per second consumed by the ``configs/tiny.yaml``
    train step on this machine. Target: >= 10x.

    python benchmarks/data_pipeline.py [--docs 3000] [--pairs 200] [--corpus-mb 3] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import JaxStep, emit  # noqa: E402

from open_r1_jax.data.minhash import MinHasher, NearDuplicateIndex, normalize_words, shingles  # noqa: E402
from open_r1_jax.data.sources import stdlib_files  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BANDS, ROWS, NGRAM = 14, 8, 5


def stdlib_docs(n: int, size: int = 2000, skip: int = 0) -> list[str]:
    """``n`` consecutive ``size``-character pieces of the stdlib source (after ``skip`` pieces)."""
    docs, buf = [], ""
    for path in stdlib_files():
        buf += path.read_text(errors="replace")
        while len(buf) >= size:
            if skip:
                skip -= 1
            else:
                docs.append(buf[:size])
                if len(docs) == n:
                    return docs
            buf = buf[size:]
    return docs


def exact_jaccard(a: str, b: str) -> float:
    sa, sb = set(shingles(normalize_words(a), NGRAM)), set(shingles(normalize_words(b), NGRAM))
    return len(sa & sb) / max(len(sa | sb), 1)


def variant(doc: str, target: float, rng: random.Random) -> tuple[str, float]:
    """Replace words until the exact Jaccard with ``doc`` drops to ``target`` or just below: random words
    while far from it, then words from the end (each changes one more shingle) to land close."""
    words = normalize_words(doc)
    out, j, tail = list(words), 1.0, 0
    while j > target:
        if j - target > 0.05:
            for _ in range(max(1, int((j - target) * len(words) / 20))):  # an edit changes <= 5 shingles
                out[rng.randrange(max(1, len(out) - 8))] = f"edit{rng.randrange(10**9)}"
        else:
            tail += 1
            out[-tail] = f"edit{rng.randrange(10**9)}"
        j = exact_jaccard(" ".join(words), " ".join(out))
    return " ".join(out), j


def bench_minhash(n_docs: int, n_pairs: int, n_loop: int) -> dict:
    from datasketch import MinHash

    docs = stdlib_docs(n_docs)
    perm = BANDS * ROWS
    ours = MinHasher(perm, NGRAM, seed=1)
    ours.signatures(docs[:64])  # warm-up
    t0 = time.perf_counter()
    ours.signatures(docs)
    ours_rate = len(docs) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for d in docs[:n_loop]:
        m = MinHash(num_perm=perm, seed=1)
        for s in shingles(normalize_words(d), NGRAM):
            m.update(s.encode("utf-8"))
    loop_rate = n_loop / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    MinHash.bulk(
        [[s.encode("utf-8") for s in shingles(normalize_words(d), NGRAM)] for d in docs[: n_loop * 4]],
        num_perm=perm,
        seed=1,
    )
    bulk_rate = n_loop * 4 / (time.perf_counter() - t0)

    rng = random.Random(0)
    queries = []  # (kind, text, realised Jaccard with its base doc)
    for target in (0.9, 0.8, 0.5, 0.3):
        for i in rng.sample(range(len(docs)), n_pairs):
            text, j = variant(docs[i], target, rng)
            queries.append((f"j{target}", text, j))
    queries += [("unrelated", d, 0.0) for d in stdlib_docs(n_pairs, skip=n_docs)]
    figures = {
        "minhash_docs": len(docs),
        "doc_chars": 2000,
        "num_perm": perm,
        "bands": BANDS,
        "rows": ROWS,
        "ours_docs_per_s": ours_rate,
        "datasketch_update_loop_docs_per_s": loop_rate,
        "datasketch_bulk_docs_per_s": bulk_rate,
        "speedup_vs_update_loop": ours_rate / loop_rate,
        "speedup_vs_bulk": ours_rate / bulk_rate,
        "queries": len(queries),
        **{
            f"mean_jaccard_{k}": float(np.mean([q[2] for q in queries if q[0] == k]))
            for k in ("j0.9", "j0.8", "j0.5", "j0.3")
        },
    }
    for name, (bands, rows, threshold) in SETTINGS.items():
        figures[name] = detection(docs, queries, bands, rows, threshold)
    return figures


# LSH settings: the code's default (datatrove's) and the stricter one of configs/data/*.yaml
SETTINGS = {"default_14x8_t0.7": (14, 8, 0.7), "yaml_24x5_t0.65": (24, 5, 0.65)}


def detection(docs: list[str], queries: list, bands: int, rows: int, threshold: float) -> dict:
    """Share of each kind of query flagged as a near-duplicate of an indexed doc; false positives."""
    hasher = MinHasher(bands * rows, NGRAM, seed=1)
    index = NearDuplicateIndex(bands, rows, threshold=threshold, seed=1)
    for i, s in enumerate(hasher.signatures(docs)):
        index.add(str(i), s)
    found: dict[str, list[bool]] = {}
    false_pos = 0
    for (kind, text, _), sig in zip(queries, hasher.signatures([q[1] for q in queries])):
        hit = index.find(sig)
        found.setdefault(kind, []).append(hit is not None)
        if hit is not None and exact_jaccard(text, docs[int(hit[0])]) < 0.5:
            false_pos += 1
    return {
        **{f"flagged_{k}": float(np.mean(v)) for k, v in found.items()},
        "recall_at_0.9": float(np.mean(found["j0.9"])),
        "recall_at_0.8": float(np.mean(found["j0.8"])),
        "false_positives_below_0.5": false_pos,
    }


def bench_throughput(corpus_mb: float, batches: int, steps: int) -> dict:
    from open_r1_jax.config import load_config
    from open_r1_jax.data.mixture import MixtureStats, open_prepared
    from open_r1_jax.data.pipeline import PipelineSpec, make_mixture_dataset
    from open_r1_jax.data.prepare import prepare

    out = Path(tempfile.mkdtemp(prefix="bench_prep_")) / "out"
    t0 = time.perf_counter()
    report = prepare(
        load_config(
            ROOT / "configs/data/stdlib.yaml",
            [f"data.max_corpus_mb={corpus_mb}", "data.heldout_percent=5", "run.progress=false"],
        ),
        out,
    )
    prep_s = time.perf_counter() - t0
    cfg = load_config(ROOT / "configs/tiny.yaml", ["data.kind=arrayrecord", f"data.prepared_dir={out}"])
    t = cfg.train
    prep = open_prepared(cfg.data, t.seq_len)
    spec = PipelineSpec(t.seq_len, t.global_batch, t.seed, cfg.data.packing_bins, train=True)
    it = iter(
        MixtureStats(make_mixture_dataset(prep.train_sources, prep.weights, spec), prep.names, prep.weights, 10**9)
    )
    first = next(it)
    t0, n_tok = time.perf_counter(), 0
    for _ in range(batches):
        n_tok += int(np.count_nonzero(next(it)["segment_ids"]))
    pipe_rate = n_tok / (time.perf_counter() - t0)

    step_s = JaxStep(cfg, first, warmup=1).run(steps)
    step_rate = int(np.count_nonzero(first["segment_ids"])) / step_s
    return {
        "prepare_seconds": prep_s,
        "prepared_output_docs": report["output_docs"],
        "prepared_tokens": report["tokens"]["output"],
        "duplicate_rate_after": report["duplicate_rate_after"],
        "pipeline_tokens_per_s": pipe_rate,
        "pipeline_batches": batches,
        "train_step_seconds": step_s,
        "train_tokens_per_s": step_rate,
        "pipeline_over_train_step": pipe_rate / step_rate,
        "seq_len": t.seq_len,
        "global_batch": t.global_batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=3000, help="2 KB documents for the signature timing")
    ap.add_argument("--pairs", type=int, default=200, help="planted pairs per Jaccard level")
    ap.add_argument("--loop-docs", type=int, default=400, help="documents for datasketch's update loop")
    ap.add_argument("--corpus-mb", type=float, default=3.0, help="stdlib MB prepared for part (b)")
    ap.add_argument("--batches", type=int, default=200, help="pipeline batches timed")
    ap.add_argument("--steps", type=int, default=10, help="train steps timed")
    ap.add_argument("--part", choices=["all", "minhash", "throughput"], default="all")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.pairs, args.loop_docs, args.corpus_mb, args.batches, args.steps = 300, 20, 60, 0.5, 20, 2
    figures = {}
    if args.part in ("all", "minhash"):
        f = bench_minhash(args.docs, args.pairs, args.loop_docs)
        print(f"(a) MinHash, {f['minhash_docs']} docs of 2 KB, {f['num_perm']} permutations:")
        print(
            f"    ours {f['ours_docs_per_s']:,.0f} docs/s | datasketch update loop "
            f"{f['datasketch_update_loop_docs_per_s']:,.0f} docs/s -> {f['speedup_vs_update_loop']:.1f}x "
            f"| datasketch bulk {f['datasketch_bulk_docs_per_s']:,.0f} docs/s -> {f['speedup_vs_bulk']:.1f}x"
        )
        for name in SETTINGS:
            d = f[name]
            print(
                f"    {name}: flagged "
                + ", ".join(
                    f"{100 * d['flagged_' + k]:.1f}% at Jaccard {f['mean_jaccard_' + k]:.3f}"
                    for k in ("j0.9", "j0.8", "j0.5", "j0.3")
                )
                + f", {100 * d['flagged_unrelated']:.1f}% of unrelated; "
                f"false positives below Jaccard 0.5: {d['false_positives_below_0.5']} of {f['queries']} queries"
            )
        figures.update(f)
    if args.part in ("all", "throughput"):
        f = bench_throughput(args.corpus_mb, args.batches, args.steps)
        print(
            f"(b) prepared {f['prepared_output_docs']} docs / {f['prepared_tokens']:,} tokens in "
            f"{f['prepare_seconds']:.1f}s; pipeline {f['pipeline_tokens_per_s']:,.0f} tokens/s vs tiny.yaml "
            f"train step {f['train_tokens_per_s']:,.0f} tokens/s -> {f['pipeline_over_train_step']:.1f}x"
        )
        figures.update(f)
    emit("data_pipeline", figures)


if __name__ == "__main__":
    main()
