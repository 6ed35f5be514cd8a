"""``python -m open_r1_jax.data.prepare`` end to end, its bad inputs, the tokenizer CLI, and training on shards."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from open_r1_jax.config import load_config
from open_r1_jax.data import prepare as prepare_lib
from open_r1_jax.data import tokenizer as tokenizer_lib
from open_r1_jax.data.mixture import open_prepared
from open_r1_jax.data.prepare import PrepareError, main, prepare
from open_r1_jax.data.shards import decode_record

EN = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use each which she do how their if will up other "
    "about out many then them these so some her would make like him into time has look two more write go see"
).split()
FR = "le la les de des et est un une dans pour que qui il elle nous vous ils sont avec sur pas plus par mais".split()
SMALL = [
    "data.clean.min_tokens=200",
    "data.clean.max_tokens=300",
    "run.progress=false",
    "data.clean.languages=[en]",
    "data.clean.samples_per_reason=3",
    "data.clean.max_bad_fraction=0.1",
]
STDLIB_YAML = str(Path(__file__).parent.parent / "configs" / "data" / "stdlib.yaml")


def salad(n_words: int, seed: int, vocab=EN) -> str:
    r = random.Random(seed)
    return " ".join(r.choice(vocab) for _ in range(n_words))


def corpus(root):
    """Three small sources with one planted problem of each kind; -> the mixture overrides."""
    text = root / "text"
    text.mkdir(parents=True)
    for i in range(12):
        (text / f"doc{i}.txt").write_text(salad(55, i))  # ~235 bytes: one window each
    (text / "long.md").write_text(salad(400, 100))  # ~2000 bytes: split into windows
    (text / "tiny.txt").write_text("too short")
    (text / "copy.txt").write_text(salad(55, 3).upper())  # exact duplicate of doc3 after normalisation
    (text / "latin1.txt").write_bytes(salad(55, 200).encode() + b" caf\xe9")  # invalid UTF-8, repaired
    lines = [json.dumps({"text": salad(55, 300 + i)}) for i in range(8)]
    lines[2] = '{"text": "broken'  # malformed line 3
    lines.append(json.dumps({"text": salad(60, 400, FR)}))  # French
    near = salad(55, 5).split()
    near[-2] = "changed"
    lines.append(json.dumps({"text": " ".join(near)}))  # near duplicate of text/doc5.txt
    (root / "mm.jsonl").write_text("\n".join(lines) + "\n")
    domain = root / "domain"
    domain.mkdir()
    for i in range(6):
        (domain / f"d{i}.txt").write_text(salad(58, 500 + i))
    return [
        "data.mixture_names=[text,multimodal,domain]",
        f"data.mixture_paths=[{text},{root / 'mm.jsonl'},{domain}]",
        "data.mixture_weights=[0.6,0.3,0.1]",
    ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    cfg = load_config(None, corpus(root) + SMALL + ["data.heldout_percent=20"])
    report = prepare(cfg, root / "out")
    return root, report


def test_report_counts_every_document(prepared):
    root, r = prepared
    assert r["balance_ok"] and r["input_docs"] + r["split_added"] == r["output_docs"] + sum(r["dropped"].values())
    assert r["dropped"] == {
        "malformed_record": 1,
        "too_short": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "language": 1,
    }
    assert r["input_docs"] == 16 + 10 + 6 and r["split_added"] > 0 and r["repaired_utf8"] == 1
    assert r["languages"] == {"en": r["output_docs"]} and r["duplicate_rate_after"] == 0.0
    assert r["tokens"]["output"] == sum(r["sources"][n]["tokens"]["output"] for n in r["sources"])
    h = r["token_length_histogram"]
    assert sum(h["input"]) == r["input_docs"] - 1 and sum(h["output"]) == r["output_docs"]  # 1 never decoded
    assert r["sources"]["multimodal"]["weight"] == 0.3 and r["errors"][0].startswith(f"{root}/mm.jsonl:3: ")
    assert json.loads((root / "out" / "report.json").read_text())["output_docs"] == r["output_docs"]
    samples = [json.loads(x) for x in (root / "out" / "dropped_samples.jsonl").read_text().splitlines()]
    where = {s["reason"]: s["where"] for s in samples}
    assert where["malformed_record"] == f"{root}/mm.jsonl:3" and where["too_short"] == f"{root}/text/tiny.txt"
    assert where["language"] == f"{root}/mm.jsonl:9" and where["near_duplicate"] == f"{root}/mm.jsonl:10"
    assert where["exact_duplicate"] == f"{root}/text/doc3.txt" or where["exact_duplicate"].endswith("copy.txt")


def test_shards_hold_the_cleaned_documents(prepared):
    root, r = prepared
    out = root / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "byte" and set(manifest["sources"]) == {"text", "multimodal", "domain"}
    import grain

    n = 0
    for name, s in manifest["sources"].items():
        for split in ("train", "heldout"):
            paths = [str(out / p) for p in s[split]["shards"]]
            recs = [decode_record(x) for x in grain.sources.ArrayRecordDataSource(paths)] if paths else []
            lengths = np.load(out / s[split]["lengths"])
            assert [len(x["tokens"]) for x in recs] == lengths.tolist()
            assert all(200 <= len(x["tokens"]) <= 300 and x["meta"]["source"] == name for x in recs)
            n += len(recs)
    assert n == r["output_docs"]
    prep = open_prepared(load_config(None, ["data.kind=arrayrecord", f"data.prepared_dir={out}"]).data, 64)
    assert prep.names == ["text", "multimodal", "domain"] and np.allclose(prep.weights, [0.6, 0.3, 0.1])
    assert len(prep.eval_source) > 0


def test_cli_prints_the_table_and_refuses_existing_output(tmp_path, capsys):
    args = ["--out", str(tmp_path / "out")] + corpus(tmp_path) + SMALL
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dropped by reason" in printed and "near_duplicate" in printed and "TOTAL" in printed
    assert main(args) == 1 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    assert main(["--out", str(other), "--overwrite"] + corpus(tmp_path / "c2") + SMALL) == 1
    assert "refusing to delete" in capsys.readouterr().err and (other / "keep.txt").exists()


def test_bad_inputs(tmp_path, capsys):
    mix = corpus(tmp_path)
    out = ["--out", str(tmp_path / "o")]
    missing = ["data.mixture_names=[a]", f"data.mixture_paths=[{tmp_path}/nope]", "data.mixture_weights=[1]"]
    assert main(out + missing + SMALL) == 1
    assert "data.mixture_paths[0] ('a')" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "blank.jsonl").write_text("\n\n")
    empty = ["data.mixture_names=[a]", f"data.mixture_paths=[{tmp_path}/blank.jsonl]", "data.mixture_weights=[1]"]
    assert main(out + empty + SMALL) == 1 and "no documents" in capsys.readouterr().err
    assert main(out + ["--overwrite"] + mix[:2] + ["data.mixture_weights=[0,0,0]"] + SMALL) == 2
    assert "sum to a positive number" in capsys.readouterr().err
    # one malformed line of 10 in mm.jsonl: over a 1% budget the run fails, naming file:line
    assert main(out + ["--overwrite"] + mix + SMALL + ["data.clean.max_bad_fraction=0.01"]) == 1
    assert f"{tmp_path}/mm.jsonl:3" in capsys.readouterr().err
    assert (tmp_path / "o" / "report.json").exists() and not (tmp_path / "o" / "manifest.json").exists()
    all_dropped = SMALL + ["data.clean.min_tokens=290"]
    assert main(out + ["--overwrite"] + mix + all_dropped + ["data.clean.max_bad_fraction=0.5"]) == 1
    assert "every document of source(s)" in capsys.readouterr().err


def test_stdlib_prepare_and_bpe_tokenizer_cli(tmp_path, capsys):
    tok_path = tmp_path / "tok" / "tokenizer.json"
    common = ["data.max_corpus_mb=0.3", "data.bpe_vocab_size=300", "model.vocab_size=300"]
    assert tokenizer_lib.main(["train", "--config", STDLIB_YAML, "--out", str(tok_path)] + common) == 0
    assert tok_path.is_file() and "trained a 300-token BPE" in capsys.readouterr().out
    cfg = load_config(
        STDLIB_YAML,
        common
        + ["data.tokenizer=bpe", f"data.tokenizer_path={tok_path}", "run.progress=false", "data.heldout_percent=10"],
    )
    r = prepare(cfg, tmp_path / "out")
    assert r["output_docs"] > 0 and r["balance_ok"] and r["tokenizer"]["vocab_size"] == 300
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    edges, counts = r["token_length_histogram"]["edges"], r["token_length_histogram"]["output"]
    assert sum(c for e, c in zip(edges, counts) if 448 <= e <= 576) == r["output_docs"]


def test_training_reads_the_mixture(prepared, micro, tmp_path):
    from open_r1_jax.training.trainer import train

    root, _ = prepared
    cfg = micro(
        "data.kind=arrayrecord",
        f"data.prepared_dir={root / 'out'}",
        "train.steps=4",
        "train.log_every=2",
        "train.eval_batches=1",
        run_dir=tmp_path / "run",
    )
    summary = train(cfg)
    assert summary["steps"] == 4 and summary["eval_tokens"] > 0
    realised = json.loads((tmp_path / "run" / "data_mixture.json").read_text())
    assert set(realised) == {"text", "multimodal", "domain"} and realised["text"]["target"] == pytest.approx(0.6)
    assert abs(sum(r["tokens"] for r in realised.values()) - 1) < 1e-6


def test_prepare_module_is_importable_without_side_effects():
    assert prepare_lib.MARKER.startswith(".") and issubclass(PrepareError, RuntimeError)
