"""``torch_ref.load_pretrained(dir)``: an exported directory (``config.json`` + safetensors, single or
sharded with a Hugging Face index) -> the ``torch_ref`` Transformer in eval mode, forward -> logits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from torch_ref.config import TorchModelConfig
from torch_ref.model import Transformer


def _read_safetensors(directory: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{index}: expected JSON with a 'weight_map' of key -> shard file ({e})") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("model-*-of-*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"{directory}: no weights found; expected model.safetensors, or "
                "model-0000i-of-0000N.safetensors shards with model.safetensors.index.json"
            )
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard named by {index.name} does not exist")
        shard = load_file(str(path))
        dup = sorted(set(shard) & set(state))
        if dup:
            raise ValueError(f"{path}: key(s) {dup[:8]} already loaded from an earlier shard")
        state.update(shard)
    return state, files


def load_pretrained(directory: str | Path) -> Transformer:
    """``dir/config.json`` + safetensors weights (single file or HF shards) -> model in eval mode."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found")
    try:
        raw = json.loads(config_path.read_text())
    except ValueError as e:
        raise ValueError(f"{config_path}: not valid JSON: {e}") from e
    if raw.get("model_type") == "open_r1_sandwich":  # a transformers export: the model keys, less HF's own
        known = {f.name for f in dataclasses.fields(TorchModelConfig)} | {"max_seq_len", "init_std"}
        raw = {k: v for k, v in raw.items() if k in known}
    try:
        cfg = TorchModelConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from e
    model = Transformer(cfg)
    state, files = _read_safetensors(directory)
    where = ", ".join(str(f) for f in files)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where} does not match {config_path}: missing keys {missing}; unexpected keys {unexpected}")
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise ValueError(f"{where}: shape mismatch for " + "; ".join(bad))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.return_aux = False  # a loaded model is a plain causal LM: forward(tokens) -> logits
    return model.eval()
