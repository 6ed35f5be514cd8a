"""``python -m open_r1_jax.export``: JAX checkpoints <-> Hugging Face transformers model folders.

    python -m open_r1_jax.export --run DIR [--step N] --out DIR [--dtype float32|bfloat16] [--max-shard-size 5GB]
    python -m open_r1_jax.export --checkpoint DIR/checkpoints/N --out DIR [...]
    python -m open_r1_jax.export --from-hf HF_DIR --out RUN_DIR

Export writes a folder that ``AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(out)`` open (``open_r1_jax/hf/files.py`` lists the files): config.json
with model_type, architectures and auto_map, the self-contained remote code, tokenizer files,
generation_config.json, and ``model.safetensors``, or, when the weights exceed ``--max-shard-size``,
``model-0000i-of-0000N.safetensors`` shards with ``model.safetensors.index.json``. Tensor names and
layouts are ``torch_ref``'s ``state_dict`` through ``open_r1_jax.name_map`` (router biases included);
each safetensors header carries ``{"format": "pt"}``. Only JSON, Python and safetensors are written.

``--from-hf`` (alias ``--from-torch``) reads a transformers checkpoint of the Llama or Mixtral family,
an export, or torch_ref safetensors (``open_r1_jax/hf/imports.py``), and writes a run directory
holding a params-only checkpoint ``checkpoints/0/{model,config}``: ``load_pretrained``, ``export
--run``, ``train.init_from`` and ``dpo.init_from`` start from it.

Every check runs before anything is written, and the output is written into a hidden sibling folder
that is moved to ``--out`` only when complete: a failure leaves ``--out`` as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from open_r1_jax import name_map

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """ "5GB" -> 5 * 10**9, "500MiB" -> 500 * 2**20, "1000" -> 1000 bytes (units as in Hugging Face)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(
            f"--max-shard-size: got {text!r}; accepted: a number of bytes with an optional unit "
            "(KB, MB, GB, KiB, MiB, GiB), e.g. 5GB"
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"--max-shard-size: got {text!r}; accepted: more than 0 bytes")
    return size


# ----------------------------------------------------------------------------- names and layouts


def torch_tensors(weights: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    """``{"params", "model_state"}`` -> {torch_ref state_dict key: host array in torch layout, ``dtype``}."""
    flat = {**name_map.flatten(weights["params"]), **name_map.flatten(weights["model_state"])}
    cast = DTYPES[dtype]
    return {
        k: v.astype(cast)
        for k, v in name_map.to_torch_state(
            name_map.unflatten({p: np.asarray(jax.device_get(x)) for p, x in flat.items()})
        ).items()
    }


def from_torch_tensors(tensors: dict[str, np.ndarray], like: dict) -> dict:
    """{torch key: array} -> ``{"params", "model_state"}`` numpy arrays shaped and typed like ``like``.

    Missing, unexpected and mis-shaped keys raise one ValueError naming them (``name_map``).
    """
    template = name_map.unflatten({**name_map.flatten(like["params"]), **name_map.flatten(like["model_state"])})
    flat = name_map.flatten(name_map.from_torch_state(tensors, template))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    out = []
    for path, ref in leaves:
        key = tuple(str(getattr(k, "key", k)) for k in path[1:])  # drop "params" / "model_state"
        out.append(np.ascontiguousarray(flat[key]).astype(ref.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------- safetensors files


def write_safetensors(tensors: dict[str, np.ndarray], out: Path, max_shard_size: int) -> list[str]:
    """One file, or HF shards in key order with an index when the total exceeds ``max_shard_size``.

    A tensor larger than ``max_shard_size`` gets a shard of its own (as Hugging Face does).
    """
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, arr in tensors.items():
        if shards[-1] and size + arr.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = arr
        size += arr.nbytes
    mask = _umask()

    def save(shard: dict, name: str) -> None:
        save_file(shard, str(out / name), metadata={"format": "pt"})
        os.chmod(out / name, 0o666 & ~mask)  # safetensors creates 0600 files; use the umask as open() does

    if len(shards) == 1:
        save(shards[0], SINGLE)
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save(shard, name)
        weight_map.update({k: name for k in shard})
    total = sum(a.nbytes for a in tensors.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names + [INDEX]


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """Tensors of ``model.safetensors`` or of the shards named by ``model.safetensors.index.json``."""
    from safetensors.numpy import load_file

    if (directory / SINGLE).is_file():
        files = [directory / SINGLE]
    elif (directory / INDEX).is_file():
        try:
            weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{directory / INDEX}: expected JSON with a 'weight_map' ({e})") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        raise FileNotFoundError(f"{directory}: no {SINGLE} and no {INDEX}")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: named by {INDEX} but missing")
        shard = load_file(str(path))
        dup = sorted(set(shard) & set(tensors))
        if dup:
            raise ValueError(f"{path}: key(s) {dup[:8]} already read from another shard")
        tensors.update(shard)
    return tensors


def _staged(out: Path, overwrite: bool) -> Path:
    """A fresh sibling folder to write into; ``_publish`` moves it to ``out``. An error before that
    leaves ``out`` as it was (nothing half-written)."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out}: already exists; choose a new folder, or pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def _publish(stage: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    os.chmod(out, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; use the umask as mkdir does


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- the two directions


def read_model_weights(directory: str | Path) -> tuple[dict, dict]:
    """A model folder (``hf.imports.read_model_dir``) -> (model section, ``{"params", "model_state"}``
    placed as ``abstract_model`` places them): what ``load_pretrained`` and ``--from-hf`` both read."""
    from open_r1_jax.checkpoint import abstract_model
    from open_r1_jax.hf.imports import read_model_dir

    section, tensors = read_model_dir(directory)
    like = abstract_model({"model": section})
    weights = from_torch_tensors(tensors, like)
    return section, jax.tree.map(lambda a, s: jax.device_put(a, s.sharding), weights, like)


def export(
    source: str | Path,
    out: str | Path,
    step: int | None = None,
    dtype: str = "float32",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    adapters: str = "merge",
) -> dict:
    """Checkpoint (run dir, checkpoints/ or checkpoints/<step>) -> a transformers model folder ``out``.
    A LoRA run exports its adapters folded in (``adapters="merge"``) or its base alone (``"drop"``)."""
    from open_r1_jax.checkpoint import read_weights
    from open_r1_jax.data.chat import template_for
    from open_r1_jax.data.tokenizer import tokenizer_for
    from open_r1_jax.hf import files

    if dtype not in DTYPES:
        raise ValueError(f"--dtype: got {dtype!r}; accepted: {sorted(DTYPES)}")
    limit = parse_size(max_shard_size)
    out = Path(out)
    config, weights, where, step = read_weights(source, step, adapters)
    section = config["model"] if isinstance(config.get("model"), dict) else config
    files.check_exportable(section)
    tokenizer = tokenizer_for(where)
    tensors = torch_tensors(weights, dtype)
    stage = _staged(out, overwrite)
    try:
        hf = files.hf_config(section, dtype, tokenizer.eos_id)
        (stage / "config.json").write_text(json.dumps(hf, indent=2))
        written = ["config.json", *write_safetensors(tensors, stage, limit), *files.write_code(stage)]
        template = template_for(where)
        written += [*files.write_tokenizer(stage, tokenizer, section.get("max_seq_len", 2048), template)]
        written.append(files.write_generation_config(stage, tokenizer.eos_id))
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "step": step,
        "source": str(where),
        "out": str(out),
        "dtype": dtype,
        "files": written,
        "tensors": len(tensors),
        "bytes": int(sum(a.nbytes for a in tensors.values())),
    }


def import_model(source: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """A model folder (transformers Llama / Mixtral, an export, torch_ref safetensors) -> a run directory
    holding a params-only checkpoint at step 0 (and the folder's tokenizer.json, if any)."""
    from open_r1_jax.checkpoint import Checkpointer

    source, out = Path(source), Path(out)
    section, weights = read_model_weights(source)
    stage = _staged(out, overwrite)
    try:
        with Checkpointer(stage / "checkpoints") as ckpt:
            ckpt.save_params(0, weights["params"], weights["model_state"], {"model": section, "source": str(source)})
        copied = [n for n in ("tokenizer.json", "tokenizer_config.json") if (source / n).is_file()]
        for name in copied:
            shutil.copyfile(source / name, stage / name)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "source": str(source),
        "out": str(out),
        "checkpoint": str(out / "checkpoints" / "0"),
        "tensors": len(jax.tree.leaves(weights)),
        "copied": copied,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m open_r1_jax.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (its latest checkpoint, or --step)")
    src.add_argument("--checkpoint", help="one checkpoint folder, e.g. runs/x/checkpoints/200")
    src.add_argument(
        "--from-hf",
        "--from-torch",
        dest="from_hf",
        help="model folder to import as a run: transformers Llama / Mixtral, an export, torch_ref safetensors",
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--step", type=int, help="checkpoint step of --run (default: the latest)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the written weights")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB, 500MiB")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder entirely")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if args.from_hf:
            summary = import_model(args.from_hf, args.out, args.overwrite)
        else:
            summary = export(
                args.run or args.checkpoint, args.out, args.step, args.dtype, args.max_shard_size, args.overwrite
            )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
