"""The stages of data preparation one by one: readers, length windows, MinHash, language ID, the cleaner,
the record schema, prepared-shard sources and the training mixture."""

import random

import numpy as np
import pytest

from open_r1_jax.config import CleanConfig, ConfigError, load_config
from open_r1_jax.data.clean import Cleaner, length_windows
from open_r1_jax.data.langid import LanguageIdentifier
from open_r1_jax.data.minhash import (
    DatasketchDuplicateCounter,
    MinHasher,
    NearDuplicateIndex,
    estimated_jaccard,
    normalize_words,
    shingles,
)
from open_r1_jax.data.mixture import MixtureStats
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset, make_mixture_dataset
from open_r1_jax.data.readers import BadRecord, RawDoc, expand, read_source
from open_r1_jax.data.report import Tally, histogram_edges
from open_r1_jax.data.shards import RecordChunkSource, ShardWriter, decode_record, encode_record
from open_r1_jax.data.tokenizer import ByteTokenizer

EN = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use each which she do how their if will up other "
    "about out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who its now find long down day did get come"
).split()
FR = (
    "le la les de des et est un une dans pour que qui il elle nous vous ils sont avec sur pas plus par mais comme "
    "tout faire bien aussi leur temps sans deux peu autre avant encore jamais toujours rien chose monde"
).split()


def salad(n_words: int, seed: int, vocab=EN) -> str:
    r = random.Random(seed)
    return " ".join(r.choice(vocab) for _ in range(n_words))


def edit(text: str, n_edits: int, seed: int) -> str:
    r, words = random.Random(seed), text.split()
    for _ in range(n_edits):
        words[r.randrange(len(words))] = f"x{r.randrange(10**6)}"
    return " ".join(words)


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(shingles(normalize_words(a), n)), set(shingles(normalize_words(b), n))
    return len(sa & sb) / len(sa | sb)


# ----------------------------------------------------------------------------- readers


def test_readers_flag_bad_utf8_surrogates_malformed_and_unreadable(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 ok")
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\nnot json\n\n{"other": 1}\n{"text": "lone \\ud800"}\n')
    (tmp_path / "c.md").write_text("unreadable")
    real = type(tmp_path).read_bytes

    def read_bytes(self):
        if self.name == "c.md":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(type(tmp_path), "read_bytes", read_bytes)
    items = list(read_source("s", expand(str(tmp_path), "key"), "text"))
    docs = [i for i in items if isinstance(i, RawDoc)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [(d.text, d.bad_at) for d in docs] == [("caf\ufffd ok", 3), ("fine", -1), ("lone \ufffd", -1)]
    assert [d.bad_utf8 for d in docs] == [True, False, True]
    assert [(b.where, b.reason) for b in bad] == [
        (f"{tmp_path}/b.jsonl:2", "malformed_record"),
        (f"{tmp_path}/b.jsonl:4", "malformed_record"),
        (f"{tmp_path}/c.md", "unreadable_file"),
    ]
    assert "Permission denied" in bad[2].detail and docs[1].where == f"{tmp_path}/b.jsonl:1"


def test_expand_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.mixture_paths\[1\].*does not exist"):
        expand(str(tmp_path / "nope"), "data.mixture_paths[1]")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no files"):
        expand(str(tmp_path / "empty"), "k")
    (tmp_path / "one.txt").write_text("x")
    files = expand(f"stdlib, {tmp_path}/one.txt", "k")  # comma-separated specs, "stdlib" = embedded corpus
    assert len(files) > 100 and files[-1] == tmp_path / "one.txt"


# ----------------------------------------------------------------------------- length window


@pytest.mark.parametrize("n", [0, 100, 447, 448, 512, 576, 577, 700, 895, 896, 1152, 1153, 1400, 2016, 5000])
def test_length_windows_fit_the_window(n):
    spans = length_windows(n, 448, 576, "split")
    if n < 448:
        assert spans == []
        return
    assert spans and all(448 <= e - s <= 576 for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= n
    covered = sum(e - s for s, e in spans)
    if n <= 576 or n >= 896 and -(-n // 576) * 448 <= n:
        assert covered == n  # an even split exists: nothing is cut
    assert length_windows(n, 448, 576, "truncate") == [(0, min(n, 576))]
    assert length_windows(n, 448, 576, "drop") == ([(0, n)] if n <= 576 else [])


# ----------------------------------------------------------------------------- MinHash


def test_minhash_estimates_jaccard_and_is_batch_independent():
    base = [salad(300, i) for i in range(40)]
    pairs = [(b, edit(b, k, i)) for i, (b, k) in enumerate(zip(base, range(0, 40)))]
    h = MinHasher(112, 5, seed=1)
    sigs = h.signatures([t for p in pairs for t in p])
    errs = [estimated_jaccard(sigs[2 * i], sigs[2 * i + 1]) - jaccard(a, b) for i, (a, b) in enumerate(pairs)]
    assert abs(np.mean(errs)) < 0.02 and np.std(errs) < 0.06
    one = np.stack([h.signatures([t])[0] for t in base[:5]])
    np.testing.assert_array_equal(one, h.signatures(base[:5]))
    short = h.signatures(["Hello, WORLD!", "hello world", "", "a b c d"])  # fewer than 5 words: one shingle
    assert (short[0] == short[1]).all() and not (short[0] == short[2]).all() and short.dtype == np.uint32
    assert normalize_words("Héllo, World 42!") == ["héllo", "world", "00"]


def test_near_duplicate_index_finds_close_pairs_only():
    h, idx = MinHasher(112, 5), NearDuplicateIndex(14, 8, threshold=0.7)
    a, b = salad(300, 1), salad(300, 2)
    close = edit(a, 3, 0)  # Jaccard ~0.9
    far = edit(a, 40, 0)  # Jaccard < 0.5
    assert jaccard(a, close) > 0.85 and jaccard(a, far) < 0.5
    sa, sb, sc, sf = h.signatures([a, b, close, far])
    assert idx.check_and_add("a", sa) is None and idx.check_and_add("b", sb) is None
    dup = idx.check_and_add("close", sc)
    assert dup is not None and dup[0] == "a" and dup[1] > 0.8
    assert idx.check_and_add("far", sf) is None


def test_independent_datasketch_pass_counts_duplicates():
    c = DatasketchDuplicateCounter(14, 8, 5, 0.7, seed=99)
    a = salad(200, 5)
    assert c.add([a, salad(200, 6)]) == 0
    assert c.add([edit(a, 2, 1), a]) == 2 and c.rate == 0.5


# ----------------------------------------------------------------------------- language ID


def test_language_identifier_offline(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    lid = LanguageIdentifier()
    assert lid.identify(salad(60, 0))[0] == "en" and lid.identify(salad(60, 0))[1] > 0.9
    assert lid.identify(salad(60, 1, FR))[0] == "fr"
    assert lid.identify("Das ist ein kleiner Satz über\nden Hund und die Katze.")[0] == "de"
    assert lid.identify("   ") == ("und", 0.0)


# ----------------------------------------------------------------------------- the cleaner


def _raw(i: int, text: str, bad: bool = False) -> RawDoc:
    return RawDoc("s", f"f.txt:{i}", text, bad)


def test_cleaner_counts_every_stage_and_balances():
    cfg = CleanConfig(min_tokens=200, max_tokens=300, languages=("en",), min_lang_score=0.5, bad_utf8="drop")
    tally = Tally(histogram_edges(200, 300), samples_per_reason=2)
    cleaner = Cleaner(cfg, ByteTokenizer(), tally)
    a = salad(50, 1)  # ~250 bytes: one window
    long = salad(200, 2)  # ~1000 bytes: split into windows of 200..300
    batch = [
        BadRecord("s", "f.jsonl:3", "malformed_record", "not valid JSON"),
        _raw(1, a),
        _raw(2, "short"),
        _raw(3, a.upper() + "!"),
        _raw(4, edit(a, 1, 0)),
        _raw(5, salad(50, 3, FR)),
        _raw(6, long),
        _raw(7, salad(50, 4), bad=True),
    ]
    kept = cleaner.process(batch)
    t = tally.source("s")
    assert dict(t.dropped) == {
        "malformed_record": 1,
        "too_short": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "language": 1,
        "bad_utf8": 1,
    }
    n_long = len(ByteTokenizer().encode(long))
    assert t.split_added == len(length_windows(n_long, 200, 300, "split")) - 1 > 0
    assert t.input_docs == 8 and t.input_docs + t.split_added == len(kept) + sum(t.dropped.values())
    assert [u.where for u in kept][:2] == ["f.txt:1", f"f.txt:6#t0-{kept[1].tokens.size}"]
    assert all(u.lang == "en" for u in kept) and tally.samples["bad_utf8"][0]["detail"] == "lone surrogate"
    assert all(200 <= len(u.tokens) <= 300 for u in kept)
    assert tally.errors == ["f.jsonl:3: not valid JSON"]
    assert tally.samples["exact_duplicate"][0]["detail"] == "same normalised text as f.txt:1"
    assert "with f.txt:1" in tally.samples["near_duplicate"][0]["detail"]
    assert tally.samples["language"][0]["detail"].startswith("fr ")


def test_cleaner_repairs_bad_utf8_by_default():
    tally = Tally(histogram_edges(10, 400), 2)
    kept = Cleaner(CleanConfig(min_tokens=10, max_tokens=400, langid=False), ByteTokenizer(), tally).process(
        [_raw(1, salad(40, 1) + "\ufffd", bad=True)]
    )
    assert len(kept) == 1 and tally.source("s").repaired_utf8 == 1 and kept[0].lang == "und"


# ----------------------------------------------------------------------------- records and sources


def test_record_schema_round_trip_with_reserved_multimodal_arrays():
    img, audio = np.arange(24, dtype=np.uint8).reshape(2, 4, 3), np.linspace(0, 1, 5, dtype=np.float32)
    rec = decode_record(
        encode_record(
            np.array([1, 65535]), {"doc": "x:1"}, text="hi", arrays={"image": img, "audio": audio}, vocab_size=65536
        )
    )
    assert rec["tokens"].dtype == np.int32 and rec["tokens"].tolist() == [1, 65535]
    assert rec["meta"] == {"doc": "x:1"} and rec["text"] == "hi"
    np.testing.assert_array_equal(rec["image"], img)
    np.testing.assert_array_equal(rec["audio"], audio)
    wide = decode_record(encode_record(np.array([70000]), {}, vocab_size=100_000))
    assert wide["tokens"].tolist() == [70000]
    future = encode_record(np.array([1]), {}).replace(b'"v":1', b'"v":9')
    with pytest.raises(ValueError, match="newer"):
        decode_record(future)


def _write(tmp_path, docs, name="s", split="train", per_shard=2):
    w = ShardWriter(tmp_path / name, split, per_shard)
    for d in docs:
        w.write(encode_record(d, {}, vocab_size=1000), len(d))
    entry = w.close()
    return [tmp_path / p for p in entry["shards"]], np.load(tmp_path / entry["lengths"]), entry


def test_record_chunk_source_matches_chunk_source(tmp_path):
    docs = [np.arange(n, dtype=np.int32) + 1 for n in (5, 9, 3, 30, 7, 1)]
    paths, lengths, entry = _write(tmp_path, docs)
    assert len(paths) == 3 and entry["records"] == 6 and entry["tokens"] == 55
    ref, src = ChunkSource(docs, 8, 999), RecordChunkSource(paths, lengths, 8, 999)
    assert len(ref) == len(src) and ref.n_target_tokens == src.n_target_tokens
    for i in range(len(ref)):
        assert all((ref[i][k] == src[i][k]).all() for k in ("inputs", "targets"))
    spec = PipelineSpec(seq_len=8, batch=2, seed=0, packing_bins=2, train=False)
    a, b = list(make_dataset(ref, spec)), list(make_dataset(src, spec))
    assert len(a) == len(b) and all((x[k] == y[k]).all() for x, y in zip(a, b) for k in x)


def test_mixture_realises_weights_and_resumes(tmp_path):
    sources = []
    for i, n in enumerate((40, 10, 25)):
        paths, lengths, _ = _write(tmp_path, [np.full(12, 10 * i + j % 9 + 1, np.int32) for j in range(n)], f"s{i}")
        sources.append(RecordChunkSource(paths, lengths, 16, 0))
    weights = [0.6, 0.3, 0.1]
    spec = PipelineSpec(seq_len=16, batch=4, seed=3, packing_bins=4, train=True)
    seen = []
    ds = MixtureStats(make_mixture_dataset(sources, weights, spec), ["a", "b", "c"], weights, 10, seen.append)
    it = iter(ds)
    for _ in range(40):
        batch = next(it)
    assert "source_ids" not in batch and set(batch) == {"inputs", "targets", "positions", "segment_ids"}
    assert len(seen) == 4
    realised = it.realised()
    for name, w in zip("abc", weights):
        assert abs(realised[name]["chunks"] - w) < 0.03 and abs(realised[name]["tokens"] - w) < 0.03
    import grain
    from etils import epath

    handler = grain.checkpoint.CheckpointHandler()  # what the trainer's checkpoints use
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
    nxt = [next(it) for _ in range(3)]
    it2 = handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(iter(ds)))
    for a in nxt:
        b = next(it2)
        assert all((a[k] == b[k]).all() for k in a)
    assert it2.realised() == it.realised()


def test_mixture_is_sharded_by_process(tmp_path, monkeypatch):
    import open_r1_jax.data.pipeline as pipeline

    paths, lengths, _ = _write(tmp_path, [np.full(10, j + 1, np.int32) for j in range(40)])
    src = RecordChunkSource(paths, lengths, 16, 0)
    spec = PipelineSpec(seq_len=16, batch=2, seed=0, packing_bins=2, train=True)
    seen = []
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(pipeline.jax, "process_index", lambda rank=rank: rank)
        it = iter(make_mixture_dataset([src], [1.0], spec))
        seen.append({int(v) for _ in range(10) for v in np.unique(next(it)["inputs"])} - {0})
    assert seen[0] and seen[1] and not seen[0] & seen[1] and seen[0] | seen[1] == set(range(1, 41))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["data.mixture_names=[a,b]", "data.mixture_weights=[0,0]"], "sum to a positive number"),
        (["data.mixture_names=[a,b]", "data.mixture_weights=[1,-1]"], "numbers >= 0"),
        (["data.mixture_names=[a,b]", "data.mixture_weights=[1]"], "one entry per name"),
        (["data.mixture_names=[a,a]", "data.mixture_weights=[1,1]"], "unique"),
        (["data.clean.min_tokens=600"], "data.clean.min_tokens (600) must be <="),
        (["data.clean.minhash_threshold=1.5"], "data.clean.minhash_threshold"),
        (["data.clean.long_docs=wrap"], "'split' | 'truncate' | 'drop'"),
        (["data.kind=arrayrecord"], "data.prepared_dir: required"),
    ],
)
def test_data_config_errors(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)
