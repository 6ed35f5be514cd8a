"""``python -m open_r1_jax.lora``: what to do with a LoRA run's adapters (``model/lora.py``).

    python -m open_r1_jax.lora merge --run RUN --out DIR [--step N] [--dtype bfloat16]
        fold the adapters into the base weights: a transformers export of the adapted model
    python -m open_r1_jax.lora save --run RUN --out DIR [--step N] [--base-out DIR]
        the adapters alone in PEFT's layout (adapter_config.json, adapter_model.safetensors);
        --base-out also exports the frozen base they apply to, so that
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, trust_remote_code=True), DIR)
        is the adapted model in PyTorch

A LoRA run is any training run with ``lora.rank`` > 0. ``export``, ``eval`` and ``generate`` read it
with its adapters folded in, as ``merge`` writes it. Every output is written aside and moved in when
complete; nothing is written when a check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path


def merge(run: str | Path, out: str | Path, step: int | None = None, dtype: str = "float32", overwrite=False) -> dict:
    """The adapted model (adapters folded into the base) as a transformers export."""
    from open_r1_jax.export import export

    _require_adapters(run, step)
    return export(run, out, step, dtype, overwrite=overwrite, adapters="merge")


def save(run: str | Path, out: str | Path, step: int | None = None, base_out: str | Path | None = None) -> dict:
    """The adapters in PEFT's layout (and, with ``base_out``, the base they adapt as an export)."""
    from open_r1_jax.checkpoint import read_weights
    from open_r1_jax.export import _publish, _staged, export
    from open_r1_jax.hf import files
    from open_r1_jax.hf.peft import write_adapter
    from open_r1_jax.model import lora

    config, weights, where, step = read_weights(run, step, adapters="keep")
    if lora.KEY not in weights["params"]:
        raise ValueError(f"{run}: no LoRA adapters in checkpoint step {step} (trained with lora.rank 0)")
    files.check_exportable(config["model"])
    out = Path(out)
    if base_out and Path(base_out).exists():
        raise FileExistsError(f"--base-out {base_out} exists; choose a new folder")
    stage = _staged(out, overwrite=False)
    try:
        base = str(Path(base_out).resolve()) if base_out else config["train"].get("init_from", "")
        written = write_adapter(
            weights["params"][lora.KEY], config["lora"]["rank"], config["lora"]["alpha"], stage, base
        )
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    summary = {"step": step, "source": str(where), "out": str(out), "files": written}
    summary["adapter_params"] = lora.count(weights["params"])
    if base_out:
        summary["base"] = export(run, base_out, step, adapters="drop")["out"]
    return summary


def _require_adapters(run, step) -> None:
    from open_r1_jax.checkpoint import open_checkpoint

    ckpt, step = open_checkpoint(run, step)
    with ckpt:
        if not int((ckpt.config(step).get("lora") or {}).get("rank", 0)):
            raise ValueError(f"{run}: checkpoint step {step} was trained without LoRA (lora.rank 0): nothing to merge")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m open_r1_jax.lora",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="fold the adapters into the base weights (a transformers export)")
    s = sub.add_parser("save", help="the adapters in PEFT's layout")
    for p in (m, s):
        p.add_argument("--run", required=True, help="a LoRA run directory or checkpoint folder")
        p.add_argument("--out", required=True, help="output folder (must not exist)")
        p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    s.add_argument("--base-out", help="also export the frozen base model to this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "merge":
            summary = merge(args.run, args.out, args.step, args.dtype, args.overwrite)
        else:
            summary = save(args.run, args.out, args.step, args.base_out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
