"""Generation: cached decoding equals recomputation, stop tokens, sampling filters, the LSH bucketed
cache, and the CLI (streamed output) on an exported tiny model."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from open_r1_jax.config import to_dict
from open_r1_jax.generate import Generator, Sampling, main, sample
from open_r1_jax.model import build_model, split_model
from open_r1_jax.model.attention import cached_attention, dot_product_attention
from open_r1_jax.model.lsh_attention import LSHAttention, hash_buckets

PROMPTS = [[72, 101, 108, 108, 111, 32, 119], [40, 41, 42]]  # two lengths: the short one is left-padded
NEW = 12


def _generator(cfg):
    model = build_model(cfg.model)
    _, params, rest = split_model(model)
    return model, Generator(cfg.model, params, rest)


def _recompute_greedy(model, prompt, n, length=32):
    """Greedy decoding by running the whole sequence every step (one fixed-length compilation)."""
    fwd = jax.jit(lambda tok: model(tok)[0])
    seq = list(prompt)
    for _ in range(n):
        buf = np.zeros((1, length), np.int32)
        buf[0, : len(seq)] = seq  # tokens after the sequence cannot change its causal logits
        seq.append(int(jnp.argmax(fwd(jnp.asarray(buf))[0, len(seq) - 1])))
    return seq[len(prompt) :]


def test_cached_greedy_equals_recompute_and_stops(micro):
    model, gen = _generator(micro("model.init_std=0.3", "model.moe.dispatch=dense"))  # dropless: CLI test
    out = gen.generate(PROMPTS, NEW, steps_per_call=5)
    assert out.finish == ["length", "length"]
    for prompt, got in zip(PROMPTS, out.tokens):
        assert got.tolist() == _recompute_greedy(model, prompt, NEW)
    # a stop token ends its row (left out); the other row runs to the length limit
    stop = int(out.tokens[0][4])
    first = out.tokens[0].tolist().index(stop)
    streamed = [[], []]
    stopped = gen.generate(
        PROMPTS,
        NEW,
        stop_ids=[stop],
        steps_per_call=5,
        on_tokens=lambda fresh: [s.extend(f) for s, f in zip(streamed, fresh)],
    )
    assert stopped.tokens[0].tolist() == out.tokens[0][:first].tolist() and stopped.finish[0] == "stop"
    assert [s for s in streamed] == [t.tolist() for t in stopped.tokens]


def test_blocked_cache_attention_equals_whole_cache():
    """Blocks of 16 over 40 slots (the last block overlaps), per-row query slots, a padded slot: the
    online softmax over the filled blocks gives the softmax over the whole cache; slots after the
    last query's never matter."""
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (3, 2, 4, 8))  # [B,T,H,K], two new tokens per row
    k, v = (jax.random.normal(x, (3, 2, 40, 8)) for x in ks[1:])  # the cache's [B,G,S,K]
    valid = jnp.ones((3, 40), bool).at[1, 3].set(False)
    q_slot = jnp.array([[4, 5], [20, 21], [36, 37]])  # [B,T]: rows at different fills
    mask = (jnp.arange(40) <= q_slot[:, :, None]) & valid[:, None, :]  # [B,T,S]
    oracle = dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask[:, None, None])
    np.testing.assert_allclose(cached_attention(q, k, v, valid, q_slot, block=0), oracle, rtol=1e-5, atol=1e-6)
    blocked = jax.jit(cached_attention, static_argnums=5)(q, k, v, valid, q_slot, 16)
    np.testing.assert_allclose(blocked, oracle, rtol=1e-5, atol=1e-6)
    junk = k.at[0, :, 6:].set(1e3), v.at[0, :, 6:].set(1e3)  # row 0 sees slots <= 5 only
    np.testing.assert_allclose(cached_attention(q, *junk, valid, q_slot, 16)[0], oracle[0], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(cached_attention(q, k, v, valid.at[1, 3].set(True), q_slot, 16)[1] - oracle[1]))) > 0


def test_small_decode_blocks_equal_recompute(micro):
    model, gen = _generator(micro("model.init_std=0.3", "model.attention.decode_block=8"))
    out = gen.generate(PROMPTS, NEW, steps_per_call=4)  # cache of 32 slots: 4 blocks, filled in turn
    for prompt, got in zip(PROMPTS, out.tokens):
        assert got.tolist() == _recompute_greedy(model, prompt, NEW)


def test_lsh_cache_with_one_bucket_equals_recompute(micro):
    """One bucket, chunk >= length: LSH is full attention (shared QK: self only when alone); the
    bucketed cache must give the recomputed tokens."""
    cfg = micro(
        "model.init_std=0.3",
        "model.drn_layers=2",
        "model.attention.kind=lsh",
        "model.attention.n_buckets=1",
        "model.attention.chunk_size=32",
        "model.attention.shared_qk=true",
    )
    model, gen = _generator(cfg)
    out = gen.generate(PROMPTS[:1], NEW, steps_per_call=4)
    assert out.tokens[0].tolist() == _recompute_greedy(model, PROMPTS[0], NEW)


def test_lsh_decode_attends_to_its_bucket(micro):
    """One round: values cached in other buckets do not reach the new token; its bucket's do."""
    cfg = micro("model.attention.n_hashes=1", "model.attention.n_buckets=4").model
    attn = LSHAttention(32, 1, 1, 16, cfg.attention, 0.3, jnp.float32, nnx.Rngs(params=0))
    x = jax.random.normal(jax.random.key(1), (1, 25, 32))
    pos = jnp.arange(25)[None]
    rng = jax.random.key(7)
    valid = jnp.ones((1, 32), bool)
    prefill = jax.jit(lambda: attn.decode(x[:, :24], pos[:, :24], attn.init_cache(1, 32), jnp.int32(0), valid, rng))
    _, cache = prefill()
    decode = jax.jit(lambda c: attn.decode(x[:, 24:], pos[:, 24:], c, jnp.int32(24), valid, rng)[0])
    ref = decode(cache)
    q = attn._project(x[:, 24:], pos[:, 24:])[0]  # [1,1,H,K]
    q_bucket = int(hash_buckets(q.transpose(0, 2, 1, 3), attn.rotations(rng), 4)[0, 0, 0, 0])
    same = np.asarray(cache["buckets"][0, :24, 0, 0]) == q_bucket  # [S] cached keys in the query's bucket
    assert same.any() and (~same).any()
    other = cache["v"].at[0, np.flatnonzero(~same)].add(5.0)
    np.testing.assert_array_equal(decode({**cache, "v": other}), ref)
    mine = cache["v"].at[0, np.flatnonzero(same)].add(5.0)
    assert float(jnp.max(jnp.abs(decode({**cache, "v": mine}) - ref))) > 1e-3


@pytest.mark.parametrize("shared_qk", [False, True])
def test_lsh_decode_in_blocks_equals_the_whole_cache(micro, shared_qk):
    """Per-row slots, blocks of 8 over 28 slots (the last overlaps): the online softmax of each round
    over the filled blocks gives the whole-cache result."""
    cfg = micro("model.attention.n_hashes=2", "model.attention.n_buckets=4", f"model.attention.shared_qk={shared_qk}")
    outs = []
    for block in (0, 8):
        att = dataclasses.replace(cfg.model.attention, decode_block=block)
        attn = LSHAttention(32, 2, 1, 16, att, 0.3, jnp.float32, nnx.Rngs(params=0))
        x = jax.random.normal(jax.random.key(1), (2, 20, 32))
        pos = jnp.broadcast_to(jnp.arange(20), (2, 20))
        valid = jnp.ones((2, 28), bool)
        rng = jax.random.key(7)
        _, cache = attn.decode(x[:, :18], pos[:, :18], attn.init_cache(2, 28), jnp.int32(0), valid, rng)
        index = jnp.array([18, 11])  # row 1 continues from slot 11: its later slots are stale
        outs.append(jax.jit(attn.decode)(x[:, 18:], pos[:, 18:], cache, index, valid, rng)[0])
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)


def test_sampling_filters():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    keys = jax.random.split(jax.random.key(1), 200)
    draw = jax.jit(jax.vmap(lambda k, s: sample(logits, k, s), in_axes=(0, None)), static_argnums=1)
    greedy = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(sample(logits, keys[0], Sampling()), greedy)
    assert np.all(np.asarray(draw(keys, Sampling(temperature=1.0, top_k=1))) == greedy)
    top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
    got = np.asarray(draw(keys, Sampling(temperature=1.0, top_k=3)))  # [200,4]
    assert all(np.isin(got[:, i], top3[i]).all() for i in range(4))
    assert len(np.unique(got[:, 0])) > 1
    probs = np.asarray(jax.nn.softmax(logits, -1))
    got = np.asarray(draw(keys, Sampling(temperature=1.0, top_p=0.5)))
    for i in range(4):
        order = np.argsort(-probs[i])
        n_keep = int(np.sum(np.cumsum(probs[i][order]) - probs[i][order] < 0.5))
        assert np.isin(got[:, i], order[:n_keep]).all()


def test_cli_streams_a_completion(micro, tmp_path, capsys):
    from open_r1_jax.export import torch_tensors, write_safetensors

    cfg = micro("model.init_std=0.3")
    _, params, rest = split_model(build_model(cfg.model))
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    write_safetensors(torch_tensors({"params": params, "model_state": rest}), tmp_path, 1 << 30)
    assert main(["--run", str(tmp_path), "--prompt", "Hello", "--max-new-tokens", "6", "--ignore-eos"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Hello") and "6 tokens in" in err
