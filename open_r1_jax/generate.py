"""Text generation with a preallocated KV cache: greedy, temperature, top-k and top-p sampling, batches
of prompts, stop tokens, streaming.

    python -m open_r1_jax.generate --run runs/tiny --prompt "def main(" --max-new-tokens 200 \\
        --temperature 0.8 --top-p 0.95

    from open_r1_jax import load_pretrained
    from open_r1_jax.generate import Generator, Sampling
    gen = Generator.from_pretrained(load_pretrained("runs/tiny"))
    out = gen.generate([ids], max_new_tokens=64, sampling=Sampling(temperature=0.8, top_k=40))

How: prompts are left-padded to one length (a multiple of ``PROMPT_ALIGN``; padding slots are never
attended) and their positions start at 0 at each prompt's first token. One jitted prefill runs all
prompt tokens through ``Transformer.decode`` into a cache preallocated for the whole generation (full
attention layers: keys and values; LSH layers: also each key's bucket per hash round) and samples the
first token; then each call of a jitted ``lax.scan`` decodes ``steps_per_call`` tokens, and the host
streams them to ``on_tokens`` between calls. Shapes are static: one compilation per (batch, prompt
length, cache length, sampling). A full-attention layer attends to every cached slot up to the
query, so cached decoding equals recomputing the whole sequence (tests/test_generate.py); an LSH layer
attends in each round to the cached keys of the query's bucket (see ``model/lsh_attention.py``).
Positions beyond ``model.max_seq_len`` use the configured rotary scaling (``--rope-scaling``).

Media (``generate(..., images=, has_image=, audio=, has_audio=)``, see ``model/multimodal.py``): the
prefill runs the adapters and writes their prefix to the first P cache slots, before the left-padded
prompts; the prompts' positions start after each row's real prefix slots, as in the forward pass, so
greedy decoding with a prefix equals the full forward pass (tests/test_multimodal.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from open_r1_jax.config import ModelConfig
from open_r1_jax.model.multimodal import prefix_slots, text_offset

PROMPT_ALIGN = 16  # prompts are left-padded to a multiple of this (fewer compilations)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 divides the logits
    top_k: int = 0  # keep only the k most likely tokens (0 = all)
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p (1 = all)
    seed: int = 0  # sampling key; the token at cache slot i uses fold_in(key(seed), i)


@dataclass
class Generation:
    tokens: list[np.ndarray]  # per prompt: the new tokens, without the stop token
    finish: list[str]  # per prompt: "stop" (a stop token or should_stop) or "length"
    prefill_s: float = 0.0  # seconds of the prefill call (prompt -> first token), compilation included
    calls: list[tuple[int, float]] = field(default_factory=list)  # (tokens per row after the call, seconds)


def sample(logits: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
    """logits [B,V] fp32 -> tokens [B] int32 under ``s`` (static)."""
    if s.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / s.temperature
    if s.top_k:
        kth = jax.lax.top_k(logits, min(s.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p < 1.0:
        logits = nucleus(logits, s.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def nucleus(logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """logits [B,V], top_p scalar or [B,1] -> logits outside the smallest set of most likely tokens
    whose probability reaches top_p set to -inf (at least one token kept)."""
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    n_keep = jnp.maximum(jnp.sum(before < top_p, axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


class Generator:
    """A model's weights plus the jitted prefill and decoding functions (compiled once per shape)."""

    def __init__(self, config: ModelConfig, params: dict, model_state: dict):
        from open_r1_jax.model import build_model

        self.config, self.params, self.model_state = config, params, model_state
        self.graphdef = nnx.split(nnx.eval_shape(lambda: build_model(config, 0)), nnx.Param, ...)[0]
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("cache_len", "sampling"))
        self._steps = jax.jit(self._steps_fn, static_argnames=("n_steps", "sampling"), donate_argnums=(2,))

    @classmethod
    def from_pretrained(cls, pretrained, **attention) -> Generator:
        """From ``open_r1_jax.load_pretrained(...)``; ``attention`` overrides keys of
        ``model.attention`` that need no new weights (e.g. rope_scaling="ntk", rope_factor=4)."""
        cfg = pretrained.config
        if attention:
            from open_r1_jax.checkpoint import model_config
            from open_r1_jax.config import to_dict

            cfg = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, **attention))
            cfg = model_config(to_dict(cfg))  # validated: a ConfigError names the key
        return cls(cfg, pretrained.params, pretrained.model_state)

    def _model(self, params, model_state):
        from open_r1_jax.model import merge_model

        return merge_model(self.graphdef, params, model_state)

    def _prefill_fn(self, params, model_state, tokens, valid, media, key, cache_len: int, sampling: Sampling):
        """tokens/valid [B,P] (left-padded), media (keyword arguments of ``media_prefix``; may be empty)
        -> (first new token [B], its position [B], cache)."""
        model = self._model(params, model_state)
        b, p = tokens.shape
        positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
        prefix = model.media_prefix(**media)
        n_prefix = 0
        if prefix is not None:  # the prefix takes the first cache slots; the text continues after it
            n_prefix = prefix.embeds.shape[1]
            positions = positions + text_offset(prefix)[:, None]
        cache = model.init_cache(b, cache_len)
        logits, cache = model.decode(tokens, positions, valid, cache, jnp.int32(0), prefix=prefix)
        first = sample(logits[:, -1], jax.random.fold_in(key, n_prefix + p), sampling)
        return first, positions[:, -1] + 1, cache

    def _steps_fn(
        self, params, model_state, cache, token, position, index, done, key, stop_ids, n_steps: int, sampling: Sampling
    ):
        """Feed ``token`` [B] (at ``position`` [B], cache slot ``index``) and decode ``n_steps`` tokens.
        Rows already done keep emitting their stop token. -> (carry, tokens [B,n_steps])."""
        model = self._model(params, model_state)
        ones = jnp.ones((token.shape[0], 1), bool)

        def one(carry, _):
            cache, token, position, index, done = carry
            logits, cache = model.decode(token[:, None], position[:, None], ones, cache, index)
            nxt = sample(logits[:, 0], jax.random.fold_in(key, index + 1), sampling)
            nxt = jnp.where(done, token, nxt)
            done = done | jnp.isin(nxt, stop_ids)
            return (cache, nxt, position + 1, index + 1, done), nxt

        carry, tokens = jax.lax.scan(one, (cache, token, position, index, done), None, length=n_steps)
        return carry, tokens.T

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        stop_ids: Sequence[int] = (),
        on_tokens: Callable[[list[list[int]]], None] | None = None,
        should_stop: Callable[[int, list[int]], bool] | None = None,
        steps_per_call: int = 16,
        cache_len: int | None = None,
        images: np.ndarray | None = None,
        has_image: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        has_audio: np.ndarray | None = None,
    ) -> Generation:
        """Continue every prompt (token ids, at least one each) by up to ``max_new_tokens`` tokens.

        A row ends at a token in ``stop_ids`` (left out of the output) or when ``should_stop(row,
        tokens so far)`` is true (checked between calls). ``on_tokens`` receives, after every call,
        each row's newly accepted tokens. ``cache_len`` fixes the cache size (to reuse a compilation).
        images [B,H,W,C] / audio [B,S] (one row per prompt; ``multimodal.stack_images`` /
        ``stack_audio`` build them from per-prompt media) with has_image / has_audio [B] (None = every
        row has one) go before the prompts through the model's adapters.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts: need at least one prompt, each with at least one token")
        if max_new_tokens < 1 or steps_per_call < 1:
            raise ValueError("max_new_tokens and steps_per_call must be >= 1")
        b = len(prompts)
        p = -(-max(len(x) for x in prompts) // PROMPT_ALIGN) * PROMPT_ALIGN
        tokens = np.zeros((b, p), np.int32)
        valid = np.zeros((b, p), bool)
        for i, x in enumerate(prompts):
            tokens[i, p - len(x) :] = np.asarray(x, np.int32)
            valid[i, p - len(x) :] = True
        if tokens.max() >= self.config.vocab_size or tokens.min() < 0:
            raise ValueError(f"prompts: token ids must be in [0, {self.config.vocab_size}) (model.vocab_size)")
        media = {"images": images, "has_image": has_image, "audio": audio, "has_audio": has_audio}
        media = {k: jnp.asarray(v) for k, v in media.items() if v is not None}
        if any(v.shape[0] != b for v in media.values()):
            raise ValueError(f"images / audio / has_*: need one row per prompt ({b})")
        n_prefix = prefix_slots(self.config, images is not None, audio is not None)  # first cache slots
        n_calls = -(-(max_new_tokens - 1) // steps_per_call)
        need = n_prefix + p + n_calls * steps_per_call  # every slot a call may write
        cache_len = cache_len or need
        if cache_len < need:
            raise ValueError(
                f"cache_len ({cache_len}) < prefix ({n_prefix}) + prompt ({p}) + decoding steps ({need - p - n_prefix})"
            )
        key = jax.random.key(sampling.seed)
        sampling = dataclasses.replace(sampling, seed=0)  # the key carries the seed: one compilation for all seeds
        stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)

        t0 = time.perf_counter()
        first, position, cache = self._prefill(
            self.params,
            self.model_state,
            jnp.asarray(tokens),
            jnp.asarray(valid),
            media,
            key,
            cache_len=cache_len,
            sampling=sampling,
        )
        first_np = np.asarray(first)
        result = Generation([[] for _ in range(b)], ["length"] * b, prefill_s=time.perf_counter() - t0)
        finished = [False] * b

        def accept(new: np.ndarray) -> None:  # new [B,n]
            fresh = []
            for i in range(b):
                row = []
                for tok in new[i].tolist():
                    if finished[i]:
                        break
                    if tok in stop_ids:
                        finished[i], result.finish[i] = True, "stop"
                        break
                    row.append(tok)
                    if len(result.tokens[i]) + len(row) >= max_new_tokens:
                        finished[i] = True
                        break
                result.tokens[i].extend(row)
                if not finished[i] and should_stop is not None and should_stop(i, result.tokens[i]):
                    finished[i], result.finish[i] = True, "stop"
                fresh.append(row)
            if on_tokens is not None:
                on_tokens(fresh)

        accept(first_np[:, None])
        result.calls.append((1, result.prefill_s))
        carry = (cache, first, position, jnp.int32(n_prefix + p), jnp.asarray(np.isin(first_np, list(stop_ids))))
        n = 1
        while not all(finished):
            t0 = time.perf_counter()
            carry, new = self._steps(
                self.params, self.model_state, *carry, key, stops, n_steps=steps_per_call, sampling=sampling
            )
            new = np.asarray(new)
            n += steps_per_call
            result.calls.append((n, time.perf_counter() - t0))
            accept(new)
        result.tokens = [np.asarray(x, np.int32) for x in result.tokens]
        return result


# ----------------------------------------------------------------------------- command line


def load_tokenizer(run: Path, path: str | None):
    """``--tokenizer`` or ``RUN/tokenizer.json`` (BPE); otherwise the byte-level tokenizer."""
    from open_r1_jax.data.tokenizer import BPETokenizer, ByteTokenizer

    candidate = Path(path) if path else run / "tokenizer.json"
    if candidate.is_file():
        return BPETokenizer.load(candidate)
    if path:
        raise FileNotFoundError(f"--tokenizer {path}: not found")
    return ByteTokenizer()


class TextStreamer:
    """Prints (``update``) or returns (``delta``) a row's text as it grows; holds back an unfinished
    UTF-8 character and the tail that could still become a stop string; cuts the text at the first
    stop string."""

    def __init__(self, tokenizer, stops: list[str], out=sys.stdout):
        self.tokenizer, self.stops, self.out = tokenizer, stops, out
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.printed = 0

    def text(self, ids: list[int]) -> tuple[str, bool]:
        """-> (text cut at the first stop string, whether a stop string occurred)."""
        text = self.tokenizer.decode(ids)
        cuts = [text.find(s) for s in self.stops if s and s in text]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def delta(self, ids: list[int], final: bool = False) -> str:
        """The text of ``ids`` not yet returned that can no longer change (all of it when ``final``)."""
        text, stopped = self.text(ids)
        end = len(text)
        if not (final or stopped):
            end = len(text.rstrip("\ufffd")) - self.hold
        if end <= self.printed:
            return ""
        new, self.printed = text[self.printed : end], end
        return new

    def update(self, ids: list[int], final: bool = False) -> None:
        if new := self.delta(ids, final):
            self.out.write(new)
            self.out.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m open_r1_jax.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory, checkpoint folder or exported directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt-file", help="one prompt per line")
    parser.add_argument(
        "--question", action="append", default=[], help="a question, asked as 'Q: ...\\nA: ' (the demo's format)"
    )
    parser.add_argument("--image", help="an image file every prompt is about (needs model.vision.enabled)")
    parser.add_argument(
        "--audio", help="an audio file (WAV, FLAC, OGG) the prompts are about (needs model.audio.enabled)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = no nucleus filter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-document token")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: RUN/tokenizer.json, else bytes)")
    parser.add_argument("--rope-scaling", choices=["none", "linear", "ntk"], help="override the run's rotary scaling")
    parser.add_argument("--rope-factor", type=float, help="context extension factor of --rope-scaling (>= 1)")
    parser.add_argument("--steps-per-call", type=int, default=8, help="tokens decoded per jitted call")
    parser.add_argument("--no-stream", action="store_true", help="print the completions at the end only")
    return parser


def _attention_overrides(args) -> dict:
    """--rope-scaling / --rope-factor -> keys of model.attention (no new weights needed)."""
    if args.rope_scaling is not None:
        factor = 1.0 if args.rope_scaling == "none" else (args.rope_factor or 1.0)
        return {"rope_scaling": args.rope_scaling, "rope_factor": factor}
    return {} if args.rope_factor is None else {"rope_factor": args.rope_factor}


def _note_long_context(cfg: ModelConfig, longest: int) -> None:
    scaled = cfg.attention.rope_scaling != "none"
    if longest > cfg.max_seq_len * (cfg.attention.rope_factor if scaled else 1):
        print(
            f"note: up to {longest} positions, beyond the trained length model.max_seq_len ({cfg.max_seq_len})"
            f"{' x rope_factor' if scaled else ''}; see --rope-scaling (docs/long_context.md)",
            file=sys.stderr,
        )


def _media(args, cfg: ModelConfig, n: int) -> dict:
    """--image / --audio -> the generator's media arguments (one copy per prompt); ValueError names the
    file or the disabled adapter."""
    from open_r1_jax.data import media_files

    out = {}
    if args.image:
        if not cfg.vision.enabled:
            raise ValueError(f"--image {args.image}: this model has no image adapter (model.vision.enabled is false)")
        image = media_files.load_image(args.image, cfg.vision)  # [R,R,C]
        out |= {"images": np.repeat(image[None], n, 0), "has_image": np.ones(n, bool)}
    if args.audio:
        if not cfg.audio.enabled:
            raise ValueError(f"--audio {args.audio}: this model has no audio adapter (model.audio.enabled is false)")
        clip = media_files.load_audio(args.audio, cfg.audio)
        audio = np.zeros((n, cfg.audio.max_samples), np.float32)
        audio[:, : len(clip)] = clip
        out |= {"audio": audio, "has_audio": np.ones(n, bool)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    prompts = list(args.prompt)
    if args.prompt_file:
        prompts += [line for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
    if args.question:
        from open_r1_jax.data.multimodal import PROMPT

        prompts += [PROMPT.format(question=q) for q in args.question]
    if not prompts:
        parser.error("give at least one --prompt, --prompt-file or --question")
    if args.rope_factor is not None and args.rope_factor < 1:
        parser.error(f"--rope-factor: got {args.rope_factor}; accepted: >= 1")
    from open_r1_jax.pretrained import load_pretrained

    try:
        gen = Generator.from_pretrained(load_pretrained(args.run, args.step), **_attention_overrides(args))
        tokenizer = load_tokenizer(Path(args.run), args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tokenizer.vocab_size > gen.config.vocab_size:
        print(
            f"error: the tokenizer has {tokenizer.vocab_size} tokens, model.vocab_size is {gen.config.vocab_size}",
            file=sys.stderr,
        )
        return 1
    ids = [tokenizer.encode(p) for p in prompts]
    if any(len(x) == 0 for x in ids):
        print("error: empty prompt", file=sys.stderr)
        return 1
    try:
        media = _media(args, gen.config, len(prompts))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _note_long_context(gen.config, max(len(x) for x in ids) + args.max_new_tokens)

    stream = not args.no_stream and len(prompts) == 1
    streamers = [TextStreamer(tokenizer, args.stop) for _ in prompts]
    accepted: list[list[int]] = [[] for _ in prompts]
    if stream:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()

    def on_tokens(fresh: list[list[int]]) -> None:
        for row, new in zip(accepted, fresh):
            row.extend(new)
        if stream:
            streamers[0].update(accepted[0])

    should_stop = (lambda i, toks: streamers[i].text(toks)[1]) if args.stop else None
    stop_ids = () if args.ignore_eos else (tokenizer.eos_id,)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    t0 = time.perf_counter()
    out = gen.generate(
        ids, args.max_new_tokens, sampling, stop_ids, on_tokens, should_stop, args.steps_per_call, **media
    )
    seconds = time.perf_counter() - t0
    if stream:
        streamers[0].update(out.tokens[0].tolist(), final=True)
        sys.stdout.write("\n")
    else:
        for i, (prompt, toks) in enumerate(zip(prompts, out.tokens)):
            print(f"=== [{i}] ({out.finish[i]}, {len(toks)} tokens)\n{prompt}{streamers[i].text(toks.tolist())[0]}")
    n = sum(len(t) for t in out.tokens)
    print(
        f"[{n} tokens in {seconds:.2f}s ({n / seconds:.1f} tokens/s; prefill {out.prefill_s:.2f}s with compilation)]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
