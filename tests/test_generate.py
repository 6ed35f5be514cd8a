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
from open_r1_jax.model.lsh_decode import BUCKET_BLOCK

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


def _listed(index: dict, buckets: np.ndarray, valid: np.ndarray, end: int, row: int) -> None:
    """The index of ``row`` lists, per key group, round and bucket, exactly the valid slots < end whose
    key is in that bucket, in increasing order (no slot twice, none under an old key's bucket)."""
    slots, counts = np.asarray(index["slots"][row]), np.asarray(index["counts"][row])  # [Gk,N,U,S], [Gk,N,U]
    for gk, n, u in np.ndindex(counts.shape):
        want = [s for s in range(end) if valid[row, s] and buckets[row, s, gk, n] == u]
        assert slots[gk, n, u, : counts[gk, n, u]].tolist() == want


@pytest.mark.parametrize("shared_qk", [False, True])
def test_lsh_decode_reads_equal_the_whole_cache(micro, shared_qk):
    """Prefill (a padded slot), a step of two tokens, then single-token steps at per-row slots, row 1
    restarting at an earlier slot (its later slots stale). Reading the filled blocks of 8 (the last
    overlaps; every write of several tokens reads them) and reading only the query's bucket lists (the
    single-token steps) give the whole cache's result at every step, and the index lists exactly
    each bucket's slots. Two buckets: lists longer than one block of the read."""
    cfg = micro("model.attention.n_hashes=2", "model.attention.n_buckets=2", f"model.attention.shared_qk={shared_qk}")
    x = jax.random.normal(jax.random.key(1), (2, 76, 32))
    pos = jnp.broadcast_to(jnp.arange(76), (2, 76))
    valid = jnp.ones((2, 92), bool).at[1, 5].set(False)  # a padded prompt slot
    rng = jax.random.key(7)
    caches, steps = [], []
    for block, index in ((0, False), (8, False), (8, True)):  # whole cache, filled blocks, bucket lists
        att = dataclasses.replace(cfg.model.attention, decode_block=block, lsh_bucket_index=index)
        attn = LSHAttention(32, 2, 1, 16, att, 0.3, jnp.float32, nnx.Rngs(params=0))
        step = jax.jit(attn.decode)
        caches.append(step(x[:, :70], pos[:, :70], attn.init_cache(2, 92), jnp.int32(0), valid, rng)[1])
        steps.append(step)
    assert int(jnp.max(caches[2]["index"]["counts"])) > BUCKET_BLOCK  # the read loops over two blocks
    for start, t in ((0, 2), (2, 1), (3, 1), (4, 1), (5, 1)):
        index = jnp.array([70 + start, 40 + start])  # row 1 continues from slot 40
        outs = []
        for j, step in enumerate(steps):
            new = slice(70 + start, 70 + start + t)
            out, caches[j] = step(x[:, new], pos[:, new], caches[j], index, valid, rng)
            outs.append(out)
        # The three reads sum the same terms in different orders (whole cache, blocks of 8 with an online
        # softmax, bucket lists), so fp32 rounding of a few ulps of the largest output can land on any
        # element (up to 5.5 eps x max|out| measured; CI once saw 3.2e-6 on an element of 0.0096): the
        # bound scales with the output's size, not each element's. A wrong key set moves outputs by
        # more than 1e-3 (the test above).
        atol = 16 * np.finfo(np.float32).eps * float(jnp.max(jnp.abs(outs[0])))
        np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=atol)
        np.testing.assert_allclose(outs[2], outs[0], rtol=0, atol=atol)
    buckets, valid = np.asarray(caches[2]["buckets"]), np.asarray(valid)
    _listed(caches[2]["index"], buckets, valid, 76, row=0)
    _listed(caches[2]["index"], buckets, valid, 46, row=1)


def test_lsh_bucket_index_serves_the_whole_cache_tokens(micro):
    """The serving engine with the bucket index (two slots: sequences join and leave, an idle slot
    rewrites slot 0 of its row) gives the greedy tokens of the generator's whole-cache LSH decoding."""
    from open_r1_jax.serving.engine import Engine, Request

    cfg = micro("model.init_std=0.3", "model.moe.dispatch=dense", "model.attention.kind=lsh",
                "model.attention.n_buckets=2", "model.attention.decode_block=16").model  # fmt: skip
    whole = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, decode_block=0))
    _, params, rest = split_model(build_model(cfg))
    prompts = [*PROMPTS, [9, 8, 7, 6]]
    want = [t.tolist() for t in Generator(whole, params, rest).generate(prompts, NEW, steps_per_call=4).tokens]
    engine = Engine(cfg, params, rest, slots=2, context=48)
    requests = [Request(p, NEW) for p in prompts]
    engine.submit(requests[0])
    engine.step()
    engine.submit(*requests[1:])
    while not all(r.done.is_set() for r in requests):
        engine.step()
    assert [r.tokens for r in requests] == want


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
