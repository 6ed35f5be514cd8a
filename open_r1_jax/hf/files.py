"""The Hugging Face files of an export, besides the weights: what makes a folder open with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` and ``AutoTokenizer.from_pretrained``.

    config.json                  model_type "open_r1_sandwich", architectures, auto_map; the model section
                                 of the run (less the JAX-only runtime keys: dtype, kernels, remat)
    configuration_sandwich.py    copied from open_r1_jax/hf/remote/ (self-contained: torch + transformers)
    modeling_sandwich.py
    tokenizer.json               the run's BPE, or the byte tokenizer written as a byte-level BPE with no merges
    tokenizer_config.json        PreTrainedTokenizerFast, eos <|endoftext|>
    generation_config.json       eos and pad token ids

Nothing here imports transformers: writing an export needs only tokenizers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from open_r1_jax.config import MODEL_RUNTIME_KEYS, ModelConfig

MODEL_TYPE = "open_r1_sandwich"
ARCHITECTURE = "SandwichForCausalLM"
REMOTE = Path(__file__).parent / "remote"
CODE_FILES = ("configuration_sandwich.py", "modeling_sandwich.py")
AUTO_MAP = {
    "AutoConfig": "configuration_sandwich.SandwichConfig",
    "AutoModelForCausalLM": "modeling_sandwich.SandwichForCausalLM",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
EOS = "<|endoftext|>"  # the end-of-document token of both tokenizers (byte: id 256)
_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - set(MODEL_RUNTIME_KEYS)


def check_exportable(section: dict) -> None:
    """The remote code has full attention and text only: an LSH model, or one with an image or audio
    adapter, is refused, naming the key."""
    att = section.get("attention") or {}
    if att.get("kind", "full") != "full" or att.get("lsh_layers"):
        raise ValueError(
            f"model.attention: kind {att.get('kind')!r}, lsh_layers {list(att.get('lsh_layers') or [])}: the "
            "transformers export implements full attention only (LSH layers have no KV-cache decoding there)"
        )
    for name in ("vision", "audio"):
        if (section.get(name) or {}).get("enabled"):
            raise ValueError(f"model.{name}.enabled: the transformers export has no {name} adapter (text only)")


def hf_config(section: dict, dtype: str, eos_id: int) -> dict:
    """A run's model section -> config.json of the export."""
    check_exportable(section)
    return {
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "auto_map": AUTO_MAP,
        **{k: v for k, v in section.items() if k in _MODEL_KEYS},
        "dtype": dtype,  # of the weights (transformers' meaning; the JAX compute dtype is a runtime key)
        "tie_word_embeddings": False,  # the model ties its head itself (tie_embeddings)
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "bos_token_id": None,
        "use_cache": True,
    }


def model_section(raw: dict) -> dict:
    """config.json of an export -> the model section (JAX runtime keys take their defaults)."""
    return {k: v for k, v in raw.items() if k in _MODEL_KEYS}


def write_code(out: Path) -> list[str]:
    for name in CODE_FILES:
        shutil.copyfile(REMOTE / name, out / name)
    return list(CODE_FILES)


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in character of each byte (what the ByteLevel pre-tokenizer emits)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b], extra = chr(256 + extra), extra + 1
    return [chars[b] for b in range(256)]


def byte_tokenizer_json():
    """``ByteTokenizer`` as a ``tokenizers.Tokenizer``: token i < 256 is byte i, 256 is <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(_byte_chars())}
    vocab[EOS] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return tok


def write_tokenizer(out: Path, tokenizer, max_len: int, chat_template: str = "") -> list[str]:
    """``tokenizer.json`` (the run's BPE, or the byte tokenizer) and ``tokenizer_config.json`` (with the
    run's chat template, if it was trained with one: ``open_r1_jax/data/chat.py``)."""
    tok = getattr(tokenizer, "tok", None) or byte_tokenizer_json()
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": max_len,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return list(TOKENIZER_FILES)


def write_generation_config(out: Path, eos_id: int) -> str:
    config = {"eos_token_id": eos_id, "pad_token_id": eos_id, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(config, indent=2))
    return "generation_config.json"
