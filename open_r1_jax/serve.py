"""An OpenAI-compatible HTTP server with continuous batching for a trained run or an export.

    python -m open_r1_jax.serve --run runs/tiny [--host 127.0.0.1] [--port 8000] [slots=16 max_queue=128 ...]

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (both with ``stream: true`` as
server-sent events; chat uses the chat template the SFT stage stored beside the run, else ChatML),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus). Settings are ``key=value``
(``ServeConfig`` below); the API key may also come from ``OPEN_R1_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeConfig:
    slots: int = 8  # sequences decoded together (the decode step's batch)
    context: int = 0  # cache slots per sequence, prompt + completion; 0 = model.max_seq_len
    max_queue: int = 64  # requests waiting for a slot; beyond it, 429 with Retry-After
    prefills_per_step: int = 1  # prompts admitted per decode step while sequences are running
    decode_steps: int = 8  # decode steps per compiled call while no request waits (1 = one per call)
    chat_max_tokens: int = 256  # a chat request's max_tokens when it gives none (within the context)
    api_key: str = ""  # required as "Authorization: Bearer KEY" when set (or OPEN_R1_API_KEY)
    model_name: str = ""  # the model id clients send; "" = the run folder's name
    warmup: bool = True  # compile the decode step and the shortest prompt bucket before listening
    log_level: str = "info"  # uvicorn's


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_r1_jax.serve", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory, checkpoint folder or exported directory")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tokenizer", help="tokenizer.json (default: RUN/tokenizer.json, else bytes)")
    p.add_argument("overrides", nargs="*", help="ServeConfig keys, e.g. slots=16 max_queue=128")
    return p


def build(args: argparse.Namespace, cfg: ServeConfig):
    """-> the FastAPI app of ``args.run`` under ``cfg`` (the engine starts with the app)."""
    from open_r1_jax.data.chat import ChatTemplate, template_for
    from open_r1_jax.generate import load_tokenizer
    from open_r1_jax.pretrained import load_pretrained
    from open_r1_jax.serving.api import build_app
    from open_r1_jax.serving.engine import Engine

    model = load_pretrained(args.run, args.step)
    tokenizer = load_tokenizer(Path(args.run), args.tokenizer)
    if tokenizer.vocab_size > model.config.vocab_size:
        n, v = tokenizer.vocab_size, model.config.vocab_size
        raise ValueError(f"the tokenizer has {n} tokens, model.vocab_size is {v}")
    engine = Engine(
        model.config,
        model.params,
        model.model_state,
        slots=cfg.slots,
        context=cfg.context,
        max_queue=cfg.max_queue,
        prefills_per_step=cfg.prefills_per_step,
        decode_steps=cfg.decode_steps,
    )
    if cfg.warmup:
        engine.warmup()
    name = cfg.model_name or Path(args.run).resolve().name
    template = ChatTemplate(template_for(args.run))
    key = cfg.api_key or os.environ.get("OPEN_R1_API_KEY", "")
    return build_app(engine, tokenizer, name, template, key, cfg.chat_max_tokens)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from open_r1_jax.config import ConfigError, build_section

    args = _parser().parse_args(argv)
    try:
        cfg = build_section(ServeConfig, args.overrides)
        app = build(args, cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=args.host, port=args.port, log_level=cfg.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
