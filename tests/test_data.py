"""Sources, tokenizers, chunking and the grain packing pipeline."""
import json

import numpy as np
import pytest

from open_r1_jax.config import DataConfig
from open_r1_jax.data.pipeline import ChunkSource, PipelineSpec, make_dataset
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
    assert report.documents == len(train) + len(held)
    assert all(is_heldout(d.name, cfg.heldout_percent) for d in held) or len(held) == 1


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
    assert int(tok.token_bytes[ids].sum()) == len("def foo(x):".encode())
    again = build_tokenizer("bpe", [], 300, cache)  # loaded from the cache, not retrained
    assert isinstance(again, BPETokenizer) and list(again.encode("def foo(x):")) == list(ids)
    assert json.loads(cache.read_text())["model"]["type"] == "BPE"
