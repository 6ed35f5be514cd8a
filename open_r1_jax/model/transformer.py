"""The "sandwich" decoder of the seed.

    images, audio ──adapters──> prefix [B,P,D]      (model.vision / model.audio; model/multimodal.py)
    tokens ──embed──> [B,T,D] ──┐  the prefix goes in front: [B,P+T,D]
                                ▼
    DRN blocks      model.drn_layers at the bottom: attention + dense softmax mixture of experts
    MoE blocks      the rest: attention + sparse top-k routed experts (+ shared experts)
                    ▼
    final RMSNorm -> LM head -> logits [B,T,V] (fp32)

Legend: B batch, T time, P prefix length, D model width, V vocabulary, L MoE layers, E experts.
Every block is pre-norm: x += attn(norm(x)); x += ffn(norm(x)). Attention kind is chosen per layer:
full causal attention, or Reformer LSH attention (``model/lsh_attention.py``) for the layers in
``model.attention.lsh_layers`` (every layer with ``kind: lsh``). LSH layer i draws its rotations from
``fold_in(rng, i)``, where ``rng`` is the key the train step passes in, or ``key(attention.lsh_seed)``
when none is given (evaluation and generation are deterministic). With ``activation_checkpoint`` each
block is rematerialised in the backward pass under the configured policy (see ``_scan_blocks``).
``decode`` runs new tokens against a preallocated cache (``init_cache``) for ``open_r1_jax.generate``.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from open_r1_jax.config import ModelConfig
from open_r1_jax.kernels import resolve as resolve_kernels
from open_r1_jax.model.attention import Attention, attention_mask
from open_r1_jax.model.kv_cache import write_slots
from open_r1_jax.model.layers import DTYPES, RMSNorm, param
from open_r1_jax.model.lsh_attention import LSHAttention
from open_r1_jax.model.moe import DRNFeedForward, MoEFeedForward
from open_r1_jax.model.multimodal import AudioAdapter, Prefix, VisionAdapter, build_prefix, prefix_positions, prepend

REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
AUX_KEYS = ("balance_loss", "seq_balance_loss", "z_loss")


def block_kinds(cfg: ModelConfig) -> list[tuple[str, bool]]:
    """(FFN kind, LSH attention?) of each block, bottom to top: "drn" for the first ``drn_layers``,
    "moe" above; LSH where ``attention.kind`` is "lsh" or the layer is in ``attention.lsh_layers``."""
    lsh = lambda i: cfg.attention.kind == "lsh" or i in cfg.attention.lsh_layers
    return [("drn" if i < cfg.drn_layers else "moe", lsh(i)) for i in range(cfg.n_layers)]


def block_runs(cfg: ModelConfig) -> list[tuple[tuple[str, bool], int]]:
    """-> [((FFN kind, LSH?), length)] of the runs of consecutive same-kind blocks: one ``lax.scan``
    each under activation checkpointing (``Transformer._scan_blocks``; the planner traces them too)."""
    return [(kind, len(list(run))) for kind, run in itertools.groupby(block_kinds(cfg))]


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, kind: str, rngs: nnx.Rngs, lsh: bool = False, expert_parallel: int = 1):
        dtype = DTYPES[cfg.dtype]
        kernels = resolve_kernels(cfg.kernels)  # "triton" or "xla"; logged once
        self.kind = kind  # "drn" or "moe"
        self.lsh = lsh  # LSH attention instead of full attention
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if lsh:
            self.attn = LSHAttention(
                cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.attention, cfg.init_std, dtype, rngs
            )
        else:
            self.attn = Attention(
                cfg.d_model,
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim,
                cfg.attention,
                cfg.init_std,
                dtype,
                rngs,
                kernels=kernels,
            )
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if kind == "drn":
            self.ffn = DRNFeedForward(cfg.d_model, cfg.drn, cfg.init_std, dtype, rngs)
        else:
            self.ffn = MoEFeedForward(
                cfg.d_model, cfg.moe, cfg.init_std, dtype, rngs, kernels=kernels, expert_parallel=expert_parallel
            )

    def __call__(self, x, positions, mask, token_mask, segment_ids=None, rng=None):
        # named scopes: profiles (benchmarks/profile_step.py) attribute each operation to its part
        with jax.named_scope("attn"):
            if self.lsh:
                x = x + self.attn(self.attn_norm(x), positions, segment_ids, rng)
            else:
                x = x + self.attn(self.attn_norm(x), positions, mask)
        with jax.named_scope(self.kind):
            y, aux = self.ffn(self.ffn_norm(x), token_mask)
        return x + y, aux

    def decode(self, x, positions, cache, index, valid, token_mask, rng=None):
        """New tokens x [B,T,D] at cache slots [index, index+T) -> (x [B,T,D], updated cache)."""
        h = self.attn_norm(x)
        if self.lsh:
            a, cache = self.attn.decode(h, positions, cache, index, valid, rng)
        else:
            a, cache = self.attn.decode(h, positions, cache, index, valid)
        x = x + a
        y, _ = self.ffn(self.ffn_norm(x), token_mask)
        return x + y, cache


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, expert_parallel: int = 1):
        self.cfg = cfg
        self.dtype = DTYPES[cfg.dtype]
        self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
        self.blocks = nnx.List([Block(cfg, kind, rngs, lsh, expert_parallel) for kind, lsh in block_kinds(cfg)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)
        # adapters exist only when enabled: a text-only model keeps its parameter tree
        adapter_args = (cfg.d_model, cfg.norm_eps, cfg.init_std, self.dtype, rngs)
        self.vision = VisionAdapter(cfg.vision, *adapter_args) if cfg.vision.enabled else None
        self.audio = AudioAdapter(cfg.audio, *adapter_args) if cfg.audio.enabled else None

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        rng: jax.Array | None = None,
        logits_at: jax.Array | None = None,
        images: jax.Array | None = None,
        has_image: jax.Array | None = None,
        audio: jax.Array | None = None,
        has_audio: jax.Array | None = None,
    ):
        """tokens [B,T] int -> (logits [B,T,V] fp32, aux).

        positions/segment_ids [B,T] describe packed rows (segment 0 = padding); by default one
        document per row.
        images [B,H,W,C] (uint8, or float in 0..1), audio [B,S] (float mono), each with has_image /
        has_audio [B] bool (None = every row has one): the adapters' prefix goes in front of the text
        (``model/multimodal.py`` states the positions and segment ids it gets). Logits stay [B,T,V],
        text positions only. No media = no prefix: the text-only computation.
        rng: a PRNG key for the LSH rotations (training passes a fresh one per step); None = the fixed
        ``key(attention.lsh_seed)``. Unused without LSH layers.
        logits_at [B,K] int: only the logits at these text positions, [B,K,V] (scoring that reads a few
        positions skips the LM head and its [B,T,V] output elsewhere).
        aux: ``aux_loss`` (coefficient-weighted sum over MoE layers), per-layer ``balance_loss``,
        ``seq_balance_loss``, ``z_loss`` [L], ``expert_counts`` [L,E] and ``expert_ids`` [L,B,T,A].
        """
        b, t = tokens.shape
        with jax.named_scope("embed"):
            x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)  # [B,T,D]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        n_prefix = 0
        prefix = self.media_prefix(images, has_image, audio, has_audio)
        if prefix is not None:
            n_prefix = prefix.embeds.shape[1]
            x, positions, segment_ids = prepend(prefix, x, positions, segment_ids)  # [B,P+T,...]
        n_lsh = sum(block.lsh for block in self.blocks)
        rng = self._lsh_rng(rng) if n_lsh else None
        mask = attention_mask(segment_ids) if n_lsh < len(self.blocks) else None  # full attention only
        token_mask = segment_ids > 0
        if self.cfg.activation_checkpoint:
            x, layer_aux = self._scan_blocks(x, positions, mask, token_mask, segment_ids, rng)
        else:
            layer_aux = []
            for i, block in enumerate(self.blocks):
                key = jax.random.fold_in(rng, i) if block.lsh else None
                x, aux = block(x, positions, mask, token_mask, segment_ids, key)
                if aux:
                    layer_aux.append(jax.tree.map(lambda a: a[None], aux))
        x = x[:, n_prefix:]
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[..., None], axis=1)  # [B,K,D]
        return self._logits(x), self._collect(layer_aux)

    def media_prefix(self, images=None, has_image=None, audio=None, has_audio=None) -> Prefix | None:
        """The adapters' prefix (embeds [B,P,D], valid [B,P]) of these media, or None without media."""
        with jax.named_scope("adapters"):
            return build_prefix(self.vision, self.audio, images, has_image, audio, has_audio, self.dtype)

    def _lsh_rng(self, rng):
        return jax.random.key(self.cfg.attention.lsh_seed) if rng is None else rng

    def _logits(self, x):
        """x [B,T,D] -> final norm -> LM head -> logits [B,T,V] fp32."""
        with jax.named_scope("lm_head"):
            x = self.final_norm(x)
            head = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
            return jnp.dot(x, head.astype(self.dtype), preferred_element_type=jnp.float32)

    def init_cache(self, batch: int, length: int) -> dict:
        """Decoding cache of ``length`` slots: which slots hold real tokens, and each layer's cache."""
        return {
            "valid": jnp.zeros((batch, length), bool),
            "layers": [block.attn.init_cache(batch, length) for block in self.blocks],
        }

    def decode(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        valid: jax.Array,
        cache: dict,
        index: jax.Array,
        prefix: Prefix | None = None,
    ) -> tuple[jax.Array, dict]:
        """T new tokens [B,T] (positions [B,T], valid [B,T]: False for padding) written to cache slots
        [index, index+T) (index scalar, or [B]: each row its own, ``model/kv_cache.py``) -> (logits
        [B,T,V] fp32, updated cache). LSH layers use the fixed rotations
        of the evaluation forward.

        prefix (``media_prefix``; prefill only): its P slots go to [index, index+P) before the tokens,
        at ``multimodal.prefix_positions``; the caller gives the tokens positions after it
        (``multimodal.text_offset``). Logits stay [B,T,V], tokens only."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)  # [B,T,D]
        n_prefix = 0
        if prefix is not None:
            n_prefix = prefix.embeds.shape[1]
            x = jnp.concatenate([prefix.embeds.astype(self.dtype), x], axis=1)  # [B,P+T,D]
            positions = jnp.concatenate([prefix_positions(prefix).astype(positions.dtype), positions], axis=1)
            valid = jnp.concatenate([prefix.valid, valid], axis=1)
        valid_all = write_slots(cache["valid"], valid, index)  # [B,S]
        layers = []
        for i, block in enumerate(self.blocks):
            with jax.ensure_compile_time_eval():  # concrete keys: the LSH layers' rotations become constants
                key = jax.random.fold_in(self._lsh_rng(None), i) if block.lsh else None
            x, layer_cache = block.decode(x, positions, cache["layers"][i], index, valid_all, valid, key)
            layers.append(layer_cache)
        return self._logits(x[:, n_prefix:]), {"valid": valid_all, "layers": layers}

    def _scan_blocks(self, x, positions, mask, token_mask, segment_ids=None, rng=None):
        """Activation checkpointing: each run of same-kind blocks is one ``lax.scan`` over their
        parameters (stacked at call time) with a rematerialised body; LSH layers also scan their keys
        ``fold_in(rng, i)`` (as the loop does), so the recomputation draws the same rotations. Inside a
        scan the recomputation survives XLA's CSE on every backend; a Python loop of ``jax.checkpoint``
        calls measured no memory saving on XLA:CPU (benchmarks/train_step.py). Cost: one transient
        stacked copy of the blocks' parameters per step."""
        policy = REMAT_POLICIES[self.cfg.remat_policy]
        layer_aux = []
        blocks = list(self.blocks)
        start = 0
        for _, n in block_runs(self.cfg):  # the blocks of one run share one structure
            end = start + n
            graphdef, first = nnx.split(blocks[start])
            states = [first] + [nnx.split(b)[1] for b in blocks[start + 1 : end]]
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
            keys = None
            if blocks[start].lsh:
                keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(start, end))

            def body(h, xs, graphdef=graphdef):
                state, key = xs
                return nnx.merge(graphdef, state)(h, positions, mask, token_mask, segment_ids, key)

            x, aux = jax.lax.scan(jax.checkpoint(body, policy=policy, prevent_cse=False), x, (stacked, keys))
            if aux:
                layer_aux.append(aux)
            start = end
        return x, layer_aux

    def _collect(self, layer_aux: list[dict]) -> dict:
        """Per-layer aux dicts (each with a leading layer axis) -> stacked [L,...] + weighted aux_loss."""
        moe = self.cfg.moe
        if not layer_aux:
            return {"aux_loss": jnp.zeros((), jnp.float32)}
        out = {k: jnp.concatenate([a[k] for a in layer_aux]) for k in layer_aux[0]}
        out["aux_loss"] = (
            moe.balance_coef * jnp.sum(out["balance_loss"])
            + moe.seq_balance_coef * jnp.sum(out["seq_balance_loss"])
            + moe.z_loss_coef * jnp.sum(out["z_loss"])
        )
        return out


def build_model(cfg: ModelConfig, seed: int = 0, expert_parallel: int = 1) -> Transformer:
    """``expert_parallel``: the size of the mesh's ``expert`` axis the model is traced under (the MoE
    layers exchange tokens in ``parallel/experts.py`` when > 1). Weights do not depend on it."""
    return Transformer(cfg, nnx.Rngs(params=seed), expert_parallel)
