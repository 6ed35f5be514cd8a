"""The multimodal path end to end on a micro model: SFT on the synthetic demo and on user media files
(text-only, image and audio rows in one compiled step), the ``vqa`` / ``aqa`` evaluation with its
blind baseline, and ``generate --image / --audio``."""

import json

import numpy as np
import pytest
from micro import micro_config
from PIL import Image
from test_multimodal_data import MEDIA, _media_tree

from open_r1_jax import generate
from open_r1_jax.config import ConfigError
from open_r1_jax.data.multimodal import qa_example
from open_r1_jax.eval import cli, media_qa
from open_r1_jax.training.trainer import train


@pytest.fixture(scope="module")
def media_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("media_run")
    summary = train(micro_config(*MEDIA, "train.steps=3", "train.warmup_steps=0", "train.eval_every=0", run_dir=run))
    return run, summary


def test_sft_on_the_multimodal_demo_trains_and_reports_answer_accuracy(media_run):
    run, summary = media_run
    assert summary["steps"] == 3 and 0 <= summary["eval_answer_accuracy"] <= 1
    assert summary["eval_before"]["eval_tokens"] == summary["eval_tokens"] > 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)


def test_sft_on_media_files_mixes_text_and_media_rows(tmp_path):
    path = _media_tree(tmp_path)
    over = [*MEDIA, "train.steps=2", "train.warmup_steps=0", "train.eval_every=0", f"sft.train_path={path}",
            f"sft.eval_path={path}", "sft.max_bad_fraction=0.6", "train.global_batch=8"]  # fmt: skip
    summary = train(micro_config(*over, run_dir=tmp_path / "run"))
    assert summary["steps"] == 2 and summary["eval_answer_accuracy"] >= 0
    report = json.loads((tmp_path / "run" / "sft_data.json").read_text())["train"]
    assert report["examples"] == 7 and len(report["bad"]) == 7 and report["media"]["bad_image_file"] == 3


def test_multimodal_demo_refuses_a_model_without_adapters(tmp_path):
    with pytest.raises(ConfigError, match="sft.demo 'multimodal' needs model.vision.enabled"):
        micro_config("train.stage=sft", "sft.demo=multimodal", run_dir=tmp_path)


def test_normalised_exact_match():
    assert media_qa.normalise(" The Red circle.\nmore") == "red circle"
    assert media_qa.normalise("Three!") == "3" == media_qa.normalise("3")
    assert media_qa.normalise("an  apple") == "apple"


def test_score_compares_with_and_without_the_media(monkeypatch):
    """Per-type accuracy and the blind figure come from the two passes (answers faked here)."""
    exs = [qa_example("What colour?", "red", qtype="colour"), qa_example("How many?", "3", qtype="count"),
           qa_example("How many?", "2", qtype="count")]  # fmt: skip
    fake = {False: ["Red.", "three", "4"], True: ["blue", "3", "3"]}
    monkeypatch.setattr(media_qa, "answers", lambda model, examples, kind, blind, cfg, progress: fake[blind])
    m = media_qa.score(None, exs, "image", None)["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(2 / 3) and m["blind_accuracy"]["value"] == pytest.approx(1 / 3)
    assert m["colour"]["value"] == 1 and m["blind_colour"]["value"] == 0
    assert m["count"]["value"] == 0.5 and m["blind_count"]["value"] == 0.5 and m["count"]["n"] == 2


def test_vqa_and_aqa_tasks_on_a_micro_model(media_run, tmp_path):
    run, _ = media_run
    out = tmp_path / "eval"
    argv = ["--run", str(run), "--out", str(out), "--tasks", "vqa,aqa", "--no-progress", "vqa.n=2", "aqa.n=2",
            "vqa.batch=8", "aqa.batch=8"]  # fmt: skip
    assert cli.main(argv) == 0
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    assert {"accuracy", "blind_accuracy", "colour", "blind_colour", "count", "smaller"} <= set(tasks["vqa"]["metrics"])
    assert {"pitch", "blind_pitch", "count", "contour", "length"} <= set(tasks["aqa"]["metrics"])
    assert tasks["vqa"]["metrics"]["accuracy"]["n"] == 14 and tasks["aqa"]["metrics"]["accuracy"]["n"] == 8
    rows = tasks["vqa"]["samples"]
    assert tasks["vqa"]["metrics"]["accuracy"]["value"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert "| vqa | blind_accuracy |" in (out / "results.md").read_text()


def test_generate_answers_about_an_image_or_a_clip(media_run, tmp_path, capsys):
    run, _ = media_run
    Image.fromarray(np.full((24, 24, 3), 30, np.uint8)).save(tmp_path / "x.png")
    import soundfile

    soundfile.write(tmp_path / "x.wav", np.zeros(2000, np.float32), 8000)
    argv = ["--run", str(run), "--question", "What colour are the shapes?", "--max-new-tokens", "4", "--no-stream"]
    assert generate.main([*argv, "--image", str(tmp_path / "x.png"), "--audio", str(tmp_path / "x.wav")]) == 0
    assert "Q: What colour are the shapes?\nA: " in capsys.readouterr().out
    assert generate.main([*argv, "--image", str(tmp_path / "missing.png")]) == 1
    assert "missing.png: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [False, True])
def test_adapter_lr_scale_multiplies_only_the_adapters_updates(frozen):
    import jax.numpy as jnp

    from open_r1_jax.config import TrainConfig
    from open_r1_jax.training.optim import make_optimizer

    params = {"vision": {"w": jnp.ones((2, 2))}, "audio": {"w": jnp.ones((2, 2))}, "blocks": {"w": jnp.ones((2, 2))}}
    grads = {k: {"w": jnp.full((2, 2), 0.5)} for k in params}
    updates = {}
    for scale in (1.0, 4.0):
        cfg = TrainConfig(lr=1e-2, warmup_steps=0, steps=10, adapter_lr_scale=scale)
        trainable = (lambda p: {k: {"w": True} for k in p}) if frozen else None
        tx = make_optimizer(cfg, trainable)
        updates[scale], _ = tx.update(grads, tx.init(params), params)
    for k in ("vision", "audio"):
        np.testing.assert_allclose(updates[4.0][k]["w"], 4 * updates[1.0][k]["w"], rtol=1e-6)
    np.testing.assert_allclose(updates[4.0]["blocks"]["w"], updates[1.0]["blocks"]["w"], rtol=1e-6)
    assert float(jnp.abs(updates[1.0]["blocks"]["w"]).max()) > 0
