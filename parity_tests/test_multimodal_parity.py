"""The image and audio adapters: JAX model versus torch_ref on the same weights and media (fp32).

Logits within 1e-5 and every gradient within 1e-4 (relative to the reference's largest entry, as in
test_model_parity.py) for image-only, audio-only and mixed batches, with rows that have no media
and packed rows; the resize of odd-sized images against torch's ``F.interpolate``. ``pytest -s``
prints the errors observed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from test_model_parity import BASE, GRAD_TOL, LOGIT_TOL, jax_model, packed_positions, rel_err, torch_model_from_jax

from open_r1_jax.model.multimodal import resize

VISION = [
    "model.vision.enabled=true",
    "model.vision.image_size=8",
    "model.vision.patch_size=4",
    "model.vision.width=16",
    "model.vision.depth=2",
    "model.vision.n_heads=2",
    "model.vision.ffn_dim=24",
    "model.vision.projector_dim=24",
]
AUDIO = [
    "model.audio.enabled=true",
    "model.audio.sample_rate=4000",
    "model.audio.max_samples=480",
    "model.audio.n_fft=64",
    "model.audio.hop_length=32",
    "model.audio.n_mels=12",
    "model.audio.width=16",
    "model.audio.depth=1",
    "model.audio.n_heads=2",
    "model.audio.ffn_dim=24",
    "model.audio.projector_dim=24",
]
MOE = ["model.moe.router=sigmoid", "model.moe.n_shared_experts=1", "model.moe.seq_balance_coef=0.01"]
B, T = 3, 10

CASES = {
    # name: (overrides, image rows, audio rows, packed)
    "image_only": (VISION, [True, False, True], None, False),
    "image_chroma_blocks": (VISION + ["model.vision.chroma_blocks=2"], [True, True, False], None, False),
    "audio_only": (AUDIO, None, [False, True, True], False),
    "audio_frame_energy": (AUDIO + ["model.audio.frame_energy=true"], None, [True, False, True], False),
    "mixed": (VISION + AUDIO + MOE, [True, False, True], [True, True, False], False),
    "mixed_packed": (VISION + AUDIO + MOE, [True, True, False], [False, True, True], True),
}
SEGMENTS = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0, 0], [1] * 10, [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]], np.int32)


def media(has_image, has_audio, seed=0):
    """Odd-sized uint8 images (resized by both sides) and white-noise clips (every mel band well above
    the log floor, so the log does not amplify the FFTs' rounding)."""
    rng = np.random.default_rng(seed)
    images = None if has_image is None else rng.integers(0, 256, (B, 13, 11, 3), dtype=np.uint8)
    audio = None if has_audio is None else (0.3 * rng.standard_normal((B, 400))).astype(np.float32)
    return images, audio


def run_jax(model, tokens, targets, positions, segments, images, has_image, audio, has_audio):
    import jax
    from flax import nnx

    from open_r1_jax.name_map import to_torch_state
    from open_r1_jax.training import losses

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    j = lambda a: None if a is None else jnp.asarray(a)

    def loss_fn(params):
        m = nnx.merge(graphdef, params, rest)
        logits, aux = m(
            j(tokens), j(positions), j(segments), images=j(images), has_image=j(has_image), audio=j(audio),
            has_audio=j(has_audio),
        )  # fmt: skip
        nll, n = losses.summed_nll(
            logits, j(targets), j(segments if segments is not None else np.ones_like(tokens)) > 0
        )
        return nll / n + aux["aux_loss"], logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return np.asarray(logits), {k: np.asarray(v) for k, v in to_torch_state(nnx.to_pure_dict(grads)).items()}


def run_torch(tmodel, tokens, targets, positions, segments, images, has_image, audio, has_audio):
    import torch

    from torch_ref import losses

    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a))
    long = lambda a: None if a is None else t(a).long()
    tmodel.zero_grad(set_to_none=True)
    logits, aux = tmodel(
        long(tokens), long(positions), long(segments), images=t(images), has_image=t(has_image), audio=t(audio),
        has_audio=t(has_audio),
    )  # fmt: skip
    mask = t(segments if segments is not None else np.ones_like(tokens)) > 0
    nll, n = losses.summed_nll(logits, long(targets), mask)
    (nll / n + aux["aux_loss"]).backward()
    grads = {k: p.grad.numpy() for k, p in tmodel.named_parameters() if p.grad is not None}
    return logits.detach().numpy(), grads


@pytest.mark.parametrize("case", list(CASES))
def test_adapters_match_torch_ref(case):
    overrides, image_rows, audio_rows, packed = CASES[case]
    cfg, model = jax_model(BASE + overrides)
    tmodel = torch_model_from_jax(cfg, model)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.model.vocab_size, (B, T), dtype=np.int32)
    targets = rng.integers(0, cfg.model.vocab_size, (B, T), dtype=np.int32)
    segments = SEGMENTS if packed else None
    positions = packed_positions(SEGMENTS) if packed else None
    images, audio = media(image_rows, audio_rows)
    has_image = None if image_rows is None else np.array(image_rows)
    has_audio = None if audio_rows is None else np.array(audio_rows)
    inputs = (tokens, targets, positions, segments, images, has_image, audio, has_audio)

    j_logits, j_grads = run_jax(model, *inputs)
    t_logits, t_grads = run_torch(tmodel, *inputs)

    assert j_logits.shape == (B, T, cfg.model.vocab_size)  # text positions only
    trainable = {k for k, _ in tmodel.named_parameters()}
    assert set(j_grads) == set(t_grads) == trainable, sorted(trainable ^ set(j_grads))
    adapter = [k for k in trainable if k.startswith(("vision.", "audio."))]
    assert adapter and all(np.abs(t_grads[k]).max() > 0 for k in adapter)  # the loss reaches every adapter weight
    logit_err = rel_err(j_logits, t_logits)
    grad_errs = {k: rel_err(j_grads[k], t_grads[k]) for k in sorted(trainable)}
    worst = max(grad_errs, key=grad_errs.get)
    worst_adapter = max(adapter, key=grad_errs.get)
    print(
        f"\n[{case}] logits {logit_err:.2e}; max grad err {grad_errs[worst]:.2e} ({worst}); "
        f"adapters {grad_errs[worst_adapter]:.2e} ({worst_adapter})"
    )
    assert logit_err <= LOGIT_TOL
    bad = {k: v for k, v in grad_errs.items() if not v <= GRAD_TOL}
    assert not bad, bad


@pytest.mark.parametrize("method", ["linear", "nearest"])
@pytest.mark.parametrize("shape", [(13, 11), (5, 7), (40, 24)])
def test_resize_matches_torch_interpolate(method, shape):
    """jax.image.resize(antialias=True) against torch's F.interpolate, shrinking and enlarging."""
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).random((2, *shape, 3), dtype=np.float32)
    got = np.asarray(resize(jnp.asarray(x), 8, method))
    mode = {"linear": "bilinear", "nearest": "nearest-exact"}[method]
    want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(8, 8), mode=mode, antialias=mode == "bilinear")
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=2e-6)
