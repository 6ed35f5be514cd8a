"""Sources, tokenizers, chunking and the grain packing pipeline."""

import json
import random

import numpy as np
import pytest

from open_r1_jax.config import ConfigError, DataConfig, load_config
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset, tokenize
from open_r1_jax.data.sources import is_heldout, load_documents
from open_r1_jax.data.tokenizer import BPETokenizer, ByteTokenizer, build_tokenizer


def test_chunks_cover_every_token_with_one_overlap():
    docs = [np.arange(10, 20), np.arange(100, 103), np.arange(50, 51)]
    src = ChunkSource(docs, seq_len=4, eos_id=999)
    pairs = [(int(a), int(b)) for i in range(len(src)) for a, b in zip(src[i]["inputs"], src[i]["targets"])]
    expected = []
    for d in docs:
        seq = list(d) + [999]
        expected += list(zip(seq[:-1], seq[1:]))
    assert sorted(pairs) == sorted(expected) and len(pairs) == len(expected) == src.n_target_tokens
    assert all(len(src[i]["inputs"]) <= 4 for i in range(len(src)))


def test_packed_batches_have_segments_and_positions():
    docs = [np.arange(n) + 1 for n in (5, 9, 3, 30, 7, 2, 8)]
    src = ChunkSource(docs, seq_len=16, eos_id=0)
    ds = make_dataset(src, PipelineSpec(seq_len=16, batch=2, seed=0, packing_bins=2, train=True))
    it = iter(ds)
    batch = next(it)
    assert set(batch) == {"inputs", "targets", "positions", "segment_ids"}
    assert all(v.shape == (2, 16) and v.dtype == np.int32 for v in batch.values())
    for row in range(2):
        seg, pos, inp, tgt = (batch[k][row] for k in ("segment_ids", "positions", "inputs", "targets"))
        for s in set(seg[seg > 0].tolist()):
            idx = np.nonzero(seg == s)[0]
            assert (pos[idx] == np.arange(len(idx))).all()  # positions restart in every document
            assert (inp[idx][1:] == tgt[idx][:-1]).all()  # targets are the next inputs within a document
    # resuming from the iterator state reproduces the following batches exactly
    state = it.get_state()
    nxt = [next(it) for _ in range(3)]
    it2 = iter(ds)
    it2.set_state(state)
    for a in nxt:
        b = next(it2)
        assert all((a[k] == b[k]).all() for k in a)


def test_stdlib_corpus_split_is_deterministic():
    cfg = DataConfig(max_corpus_mb=0.5)
    train, held, report = load_documents(cfg)
    train2, held2, _ = load_documents(cfg)
    assert [d.name for d in train] == [d.name for d in train2] and held and train
    assert report.documents <= len(train) + len(held) <= report.documents + len(report.tail_split)  # tail cut
    assert all(is_heldout(d.name, cfg.heldout_percent) for d in held) or report.tail_split == ["stdlib"]


def test_jsonl_bad_lines_are_reported_with_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "hello world"}\nnot json\n{"other": 1}\n\n{"text": "second doc"}\n')
    train, held, report = load_documents(DataConfig(sources=(str(f),), heldout_percent=0))
    assert sorted(d.text for d in train + held) == ["hello world", "second doc"]
    assert len(report.bad_records) == 2
    assert report.bad_records[0].startswith(f"{f}:2: not valid JSON")
    assert report.bad_records[1].startswith(f"{f}:3: no string field 'text'")


def test_folders_text_files_and_invalid_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 ok")  # latin-1 byte: not UTF-8
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# doc b")
    train, held, report = load_documents(DataConfig(sources=(str(tmp_path),), heldout_percent=0))
    assert report.files == 2 and report.decode_errors == 1
    assert "caf\ufffd ok" in [d.text for d in train + held]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(DataConfig(sources=(str(tmp_path / "nope.txt"),)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no files"):
        load_documents(DataConfig(sources=(str(tmp_path / "empty"),)))


WINDOW = 16  # bytes; the files below are random enough that every 16-byte window is unique


def _write_random(path, n_chars, seed):
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _().,=é∑\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(rng.choice(alphabet) for _ in range(n_chars)), encoding="utf-8")
    return path


def _assert_no_heldout_window_is_trained(train, held, seq_len=64):
    """Training chunks as ``training.loop.build_data`` makes them (ByteTokenizer, ChunkSource): no
    WINDOW-byte window of a held-out document may appear in the bytes of any training chunk."""
    tok = ByteTokenizer()
    src = ChunkSource(tokenize([d.text for d in train], tok, "train", False), seq_len, tok.eos_id)
    trained = set()
    for i in range(len(src)):
        item = src[i]
        ids = np.concatenate([item["inputs"], item["targets"][-1:]])
        b = bytes(int(t) for t in ids if t < 256)
        trained.update(b[j : j + WINDOW] for j in range(len(b) - WINDOW + 1))
    assert trained  # the check looks at something
    for d in held:
        b = d.text.encode("utf-8")
        leaked = [j for j in range(len(b) - WINDOW + 1) if b[j : j + WINDOW] in trained]
        assert not leaked, f"held-out {d.name}: {len(leaked)} of its {WINDOW}-byte windows are in training chunks"


def _source_text(paths):
    return "".join(p.read_text(encoding="utf-8") for p in paths)


def _assert_tail_split(train, held, paths, percent):
    """train + held-out reassemble the source's text in order, and the held-out part is its tail."""
    text = _source_text(paths)
    held_text = "".join(d.text for d in held)
    assert "".join(d.text for d in train) + held_text == text
    assert abs(len(held_text) - len(text) * percent / 100) <= 1
    assert 0 < len(held_text) < len(text)


def test_one_file_tail_is_held_out_and_never_trained(tmp_path):
    f = _write_random(tmp_path / "one.txt", 3000, seed=1)
    train, held, report = load_documents(DataConfig(sources=(str(f),), heldout_percent=10))
    _assert_no_heldout_window_is_trained(train, held)
    _assert_tail_split(train, held, [f], 10)
    assert [d.name for d in train] == [f"{f}[:2700]"] and [d.name for d in held] == [f"{f}[2700:]"]
    assert report.tail_split == [str(f)] and "tail" in report.summary()


def test_two_files_in_one_folder_split_by_tail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative names: the hash split is deterministic (neither file is held out)
    paths = [_write_random(tmp_path / "two" / n, 1000, seed=i) for i, n in enumerate(("a.txt", "b.txt"))]
    assert not any(is_heldout(f"two/{n}", 10) for n in ("a.txt", "b.txt"))
    train, held, _ = load_documents(DataConfig(sources=("two",), heldout_percent=10))
    _assert_no_heldout_window_is_trained(train, held)
    _assert_tail_split(train, held, paths, 10)
    assert [d.name for d in train] == ["two/a.txt", "two/b.txt[:800]"] and [d.name for d in held] == ["two/b.txt[800:]"]


def test_each_source_is_split_on_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _write_random(tmp_path / "a.txt", 2000, seed=3)
    b = _write_random(tmp_path / "b.txt", 500, seed=4)
    many = [_write_random(tmp_path / "many" / f"f{i:02d}.txt", 200, seed=100 + i) for i in range(60)]
    train, held, report = load_documents(DataConfig(sources=("a.txt", "b.txt", "many"), heldout_percent=10))
    _assert_no_heldout_window_is_trained(train, held)
    for path in (a, b):  # single-file sources: their own tail, 10% of each
        name = path.name
        _assert_tail_split(
            [d for d in train if d.name.startswith(name)], [d for d in held if d.name.startswith(name)], [path], 10
        )
    assert report.tail_split == ["a.txt", "b.txt"]
    # the 60-file source is split by the hash of the names: whole files, the same as is_heldout says
    held_many = sorted(d.name for d in held if d.name.startswith("many/"))
    expected = sorted(f"many/{p.name}" for p in many if is_heldout(f"many/{p.name}", 10))
    assert held_many == expected and 0 < len(expected) < 60


def test_many_files_split_by_name_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative names "many/fNN.txt": the same hash split on every run
    paths = [_write_random(tmp_path / "many" / f"f{i:02d}.txt", 300, seed=i) for i in range(60)]
    train, held, report = load_documents(DataConfig(sources=("many",), heldout_percent=20))
    _assert_no_heldout_window_is_trained(train, held)
    assert report.tail_split == [] and held and train
    assert {d.name for d in held} == {f"many/{p.name}" for p in paths if is_heldout(f"many/{p.name}", 20)}
    assert sorted(d.text for d in train + held) == sorted(p.read_text(encoding="utf-8") for p in paths)


def test_eval_sources_are_the_heldout_set(tmp_path):
    train_paths = [_write_random(tmp_path / "train" / f"t{i}.txt", 500, seed=i) for i in range(3)]
    val = _write_random(tmp_path / "val.txt", 400, seed=50)
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text(json.dumps({"text": "a held-out record"}) + "\nnot json\n")
    cfg = DataConfig(sources=(str(tmp_path / "train"),), eval_sources=(str(val), str(jsonl)), heldout_percent=10)
    train, held, report = load_documents(cfg)
    _assert_no_heldout_window_is_trained(train, held)
    assert [d.name for d in train] == [str(p) for p in train_paths]  # every training document, whole
    assert [d.text for d in train] == [p.read_text(encoding="utf-8") for p in train_paths]
    assert [d.name for d in held] == [str(val), f"{jsonl}:1"] and report.tail_split == []
    assert report.files == 5 and report.bad_records == [f"{jsonl}:2: not valid JSON (Expecting value)"]
    with pytest.raises(FileNotFoundError, match="data.eval_sources: .* does not exist"):
        load_documents(DataConfig(sources=(str(tmp_path / "train"),), eval_sources=(str(tmp_path / "nope"),)))
    with pytest.raises(ValueError, match="also in data.sources"):
        load_documents(DataConfig(sources=(str(tmp_path / "train"),), eval_sources=(str(train_paths[0]),)))
    with pytest.raises(ConfigError, match="data.eval_sources: only with data.kind 'corpus'"):
        load_config(None, ["data.eval_sources=[val.txt]", "data.kind=arrayrecord", "data.prepared_dir=x"])


def test_heldout_percent_zero_holds_nothing_out(tmp_path):
    f = _write_random(tmp_path / "one.txt", 100, seed=7)
    train, held, _ = load_documents(DataConfig(sources=(str(f),), heldout_percent=0))
    assert held == [] and [d.text for d in train] == [f.read_text(encoding="utf-8")]


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "déjà vu ∑"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and ids.max() < 256
    assert tok.token_bytes[tok.eos_id] == 0 and tok.token_bytes[:256].sum() == 256


def test_bpe_trains_offline_and_caches(tmp_path):
    texts = ["def foo(x):\n    return x + 1\n" * 20, "class Bar:\n    pass\n" * 20]
    cache = tmp_path / "tokenizer.json"
    tok = build_tokenizer("bpe", texts, 300, cache)
    assert cache.is_file() and tok.vocab_size <= 300 and tok.eos_id is not None
    ids = tok.encode("def foo(x):")
    assert tok.decode(ids) == "def foo(x):"
    assert int(tok.token_bytes[ids].sum()) == len(b"def foo(x):")
    again = build_tokenizer("bpe", [], 300, cache)  # loaded from the cache, not retrained
    assert isinstance(again, BPETokenizer) and list(again.encode("def foo(x):")) == list(ids)
    assert json.loads(cache.read_text())["model"]["type"] == "BPE"


def test_shuffled_batches_give_each_process_its_own_rows():
    """DPO's training stream: process i of n reads rows i::n only, every one of them once per epoch."""
    from open_r1_jax.data.pipeline import shuffled_batches

    arrays = {"id": np.arange(12, dtype=np.int32)[:, None]}
    seen = []
    for shard in range(3):
        it = shuffled_batches(arrays, rows=2, seed=0, shard=shard, n_shards=3)
        rows = np.concatenate([next(it)["id"][:, 0] for _ in range(2)])  # one epoch: 4 rows
        assert sorted(rows) == list(range(shard, 12, 3))
        seen += list(rows)
    assert sorted(seen) == list(range(12))
