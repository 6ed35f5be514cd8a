"""``prepare`` on media: image / audio arrays stored in the shards beside the tokens (JSONL records
naming files, and the synthetic shapes and tones), and pretraining on a mixture whose rows mix text
and media in one compiled step."""

import json

import numpy as np
import pytest
from micro import micro_config
from test_multimodal_data import MEDIA, _media_tree
from test_prepare import salad

from open_r1_jax.config import ConfigError
from open_r1_jax.data import media_files
from open_r1_jax.data.mixture import open_prepared
from open_r1_jax.data.pipeline import PipelineSpec, make_dataset, make_mixture_dataset
from open_r1_jax.data.prepare import prepare
from open_r1_jax.data.shards import decode_record
from open_r1_jax.data.synthetic import shapes, tones

MODEL = [o for o in MEDIA if o.startswith("model.")]  # 16 x 16 images, 1 s clips at 4 kHz
SMALL = ["data.clean.min_tokens=200", "data.clean.max_tokens=300", "data.clean.max_bad_fraction=0.5",
         "data.heldout_percent=20", "run.progress=false", "data.clean.samples_per_reason=20"]  # fmt: skip


def records(out, source: str) -> list[dict]:
    from array_record.python.array_record_module import ArrayRecordReader

    found = []
    for split in ("train", "heldout"):
        for path in sorted((out / source).glob(f"{split}-*.array_record")):
            reader = ArrayRecordReader(str(path))
            found += [decode_record(r) for r in reader.read_all()]
    return found


@pytest.fixture(scope="module")
def media_prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("media_prep")
    text = root / "text"
    text.mkdir()
    for i in range(10):
        (text / f"doc{i}.txt").write_text(salad(55, i))
    jsonl = _media_tree(root)  # 13 lines + a malformed one (test_multimodal_data)
    extra = [
        {"image": "grey.png", "caption": "a grey square"},  # 15: line 2 again: exact duplicate
        {"image": "wide.png", "caption": "a grey square"},
    ]  # 16: same caption, other image: kept
    with jsonl.open("a") as f:
        f.write("".join(json.dumps(x) + "\n" for x in extra))
    mix = [
        "data.mixture_names=[text,multimodal]",
        f"data.mixture_paths=[{text},'{jsonl},synthetic:shapes:24,synthetic:tones:12']",
        "data.mixture_weights=[0.5,0.5]",
    ]
    cfg = micro_config(*MODEL, *mix, *SMALL)
    return root, prepare(cfg, root / "out"), cfg


def test_prepare_stores_media_arrays_and_counts_bad_files(media_prep):
    root, r, _ = media_prep
    path = root / "media" / "media.jsonl"
    mm = r["sources"]["multimodal"]
    # 16 JSONL lines + 36 synthetic: 6 bad files or fields, 2 malformed (no "text"; not JSON), 1 duplicate
    assert mm["input_docs"] == 52 and mm["output_docs"] == 43 and mm["balance_ok"]
    assert mm["dropped"] == {"bad_media": 6, "malformed_record": 2, "exact_duplicate": 1}
    assert mm["images"] == 3 + 1 + 24 and mm["clips"] == 3 + 12
    assert {e.split(": ")[0] for e in r["errors"]} >= {f"{path}:{n}" for n in (4, 5, 6, 10, 11, 13, 14)}
    assert r["media_events"]["image_converted"] == 3 and r["media_events"]["audio_resampled"] == 1
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["media"] == {"image_size": 16, "channels": 3, "sample_rate": 4000, "max_samples": 4000}
    split = manifest["sources"]["multimodal"]
    assert split["train"]["images"] + split["heldout"]["images"] == 28
    text = manifest["sources"]["text"]
    assert not any(text[s]["images"] or text[s]["clips"] for s in ("train", "heldout"))


def test_stored_arrays_are_the_loaded_files_and_the_drawn_examples(media_prep):
    root, _, cfg = media_prep
    got = {rec["meta"]["doc"]: rec for rec in records(root / "out", "multimodal")}
    path = root / "media" / "media.jsonl"
    wide = got[f"{path}:1"]
    assert wide["image"].shape == (16, 16, 3) and wide["image"].dtype == np.uint8 and wide["image"].max() == 200
    assert bytes(wide["tokens"].astype(np.uint8)).decode() == "Q: What colour?\nA: grey"
    loaded = media_files.load_audio(root / "media" / "stereo8k.wav", cfg.model.audio)
    np.testing.assert_array_equal(got[f"{path}:7"]["audio"], loaded)
    assert set(got[f"{path}:16"]) >= {"image"} and f"{path}:15" not in got  # same caption, other image: kept
    shape = shapes.example(0, 5, False, 16)
    np.testing.assert_array_equal(got["synthetic:shapes:5"]["image"], shape["image"])
    text = bytes(got["synthetic:shapes:5"]["tokens"].astype(np.uint8)).decode()
    assert shape["caption"] in text and all(f"Q: {q}\nA: {a}" in text for q, a in shape["qa"].values())
    clip = tones.example(0, 3, False, 4000)
    np.testing.assert_array_equal(got["synthetic:tones:3"]["audio"], clip["audio"])
    assert "image" not in got["synthetic:tones:3"]


def test_mixture_rows_carry_their_media_in_one_shape(media_prep):
    root, _, cfg = media_prep
    d = cfg.data.__class__(**{**cfg.data.__dict__, "prepared_dir": str(root / "out")})
    prep = open_prepared(d, 64, cfg.model)
    assert [name for name, _, _ in prep.media] == ["image", "audio"]
    assert sum(s.cut for s in prep.train_sources) > 0  # synthetic rows of > 64 bytes are cut, and counted
    spec = PipelineSpec(64, 8, 0, 8, train=True, media=prep.media)
    it = iter(make_mixture_dataset(prep.train_sources, prep.weights, spec))
    stored = records(root / "out", "multimodal")
    seen = set()
    for _ in range(6):
        b = next(it)
        assert b["image"].shape == (8, 16, 16, 3) and b["audio"].shape == (8, 4000) and b["inputs"].shape == (8, 64)
        for i in range(8):
            media = b["has_image"][i] or b["has_audio"][i]
            seen.add((bool(b["has_image"][i]), bool(b["has_audio"][i])))
            if not media:
                assert not b["image"][i].any() and not b["audio"][i].any()
                continue
            seg = b["segment_ids"][i]
            assert set(seg.tolist()) <= {0, 1}  # a media row holds its own document only
            n = int(seg.sum())
            same_text = [r for r in stored if np.array_equal(r["tokens"][:n], b["inputs"][i, :n])]
            if b["has_image"][i]:  # the row's image is that of a record with the row's text
                assert any(np.array_equal(b["image"][i], r.get("image")) for r in same_text)
                assert not b["audio"][i].any()
            else:
                assert any(np.array_equal(b["audio"][i], np.pad(r["audio"], (0, 4000 - len(r["audio"]))))
                           for r in same_text if "audio" in r)  # fmt: skip
    assert seen == {(False, False), (True, False), (False, True)}
    state = it.get_state()  # exact resume: the same next batch, media included
    again = iter(make_mixture_dataset(prep.train_sources, prep.weights, spec))
    again.set_state(state)
    want, got = next(it), next(again)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    eval_batch = next(iter(make_dataset(prep.eval_source, PipelineSpec(64, 8, 0, 8, train=False, media=prep.media))))
    assert eval_batch["image"].shape[1:] == (16, 16, 3)


def test_media_shards_need_the_adapters_at_their_settings(media_prep):
    root, _, cfg = media_prep
    d = cfg.data.__class__(**{**cfg.data.__dict__, "prepared_dir": str(root / "out")})
    with pytest.raises(ConfigError, match=r"model.vision.enabled is false, but .* holds 28 images"):
        open_prepared(d, 64, micro_config().model)
    with pytest.raises(ConfigError, match=r"model.vision.image_size / channels: 32 / 3, but .* prepared at 16 / 3"):
        open_prepared(d, 64, micro_config(*MODEL, "model.vision.image_size=32").model)
    with pytest.raises(ConfigError, match=r"model.audio.sample_rate / max_samples: 8000 / 4000, but .* 4000 Hz"):
        open_prepared(d, 64, micro_config(*MODEL, "model.audio.sample_rate=8000").model)


def test_pretraining_on_a_media_mixture(media_prep, tmp_path):
    """Text and media rows in every batch through one compiled step (the trainer compiles ahead of
    time: a batch of another shape would fail), with the mixture logged per source."""
    from open_r1_jax.training.trainer import train

    root, _, _ = media_prep
    over = [*MODEL, "data.kind=arrayrecord", f"data.prepared_dir={root / 'out'}", "train.seq_len=64",
            "train.global_batch=8", "train.steps=3", "train.warmup_steps=0", "train.eval_batches=1"]  # fmt: skip
    summary = train(micro_config(*over, run_dir=tmp_path / "run"))
    assert summary["steps"] == 3 and summary["eval_tokens"] > 0 and np.isfinite(summary["eval_loss"])
    realised = json.loads((tmp_path / "run" / "data_mixture.json").read_text())
    assert realised["multimodal"]["target"] == pytest.approx(0.5) and realised["multimodal"]["chunks"] > 0


def test_synthetic_specs_and_media_records_without_a_reader(tmp_path):
    from open_r1_jax.data.readers import BadRecord, RawDoc, expand, read_source

    for bad in ("synthetic:nope", "synthetic:finance:3", "synthetic:shapes:0", "synthetic:tones:x"):
        with pytest.raises(FileNotFoundError, match=r"data.mixture_paths\[1\]: .* known: .*synthetic:shapes"):
            expand(bad, "data.mixture_paths[1]")
    finance = list(read_source("d", expand("synthetic:finance", "k"), "text"))
    assert len(finance) == 800 and all(isinstance(d, RawDoc) and d.media is None for d in finance)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "x.png", "caption": "c"}) + "\n")
    (item,) = read_source("m", expand(str(tmp_path / "m.jsonl"), "k"), "text")  # tokenizer-free reading
    assert isinstance(item, BadRecord) and item.reason == "bad_media" and "loads no media" in item.detail
    with pytest.raises(ValueError, match="synthetic media need a media reader"):
        list(read_source("m", ["synthetic:shapes:2"], "text"))
