"""The image and audio adapters (model/multimodal.py, model/audio_features.py): shapes, resizing, masks
for rows without media, the prefix convention, the log-mel frontend against librosa, config errors,
and greedy generation with a prefix against the full forward pass. Parity with torch_ref is in
parity_tests/test_multimodal_parity.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from micro import MICRO

from open_r1_jax.config import ConfigError, VisionConfig, load_config
from open_r1_jax.model import build_model
from open_r1_jax.model import multimodal as mm
from open_r1_jax.model.audio_features import log_mel, mel_filters

VISION = ["model.vision.enabled=true", "model.vision.image_size=8", "model.vision.patch_size=4"]
VISION += ["model.vision.width=16", "model.vision.depth=1", "model.vision.n_heads=2", "model.vision.ffn_dim=16"]
VISION += ["model.vision.projector_dim=16"]
AUDIO = ["model.audio.enabled=true", "model.audio.sample_rate=4000", "model.audio.max_samples=480"]
AUDIO += ["model.audio.n_fft=64", "model.audio.hop_length=32", "model.audio.n_mels=12", "model.audio.width=16"]
AUDIO += ["model.audio.depth=1", "model.audio.n_heads=2", "model.audio.ffn_dim=16", "model.audio.projector_dim=16"]
N_IMAGE, N_AUDIO = 4, 4  # (8/4)^2 patches; 16 frames -> 8 -> 4 tokens
B, T = 2, 6


@functools.cache
def model_and_forward():
    cfg = load_config(None, MICRO + VISION + AUDIO)
    model = build_model(cfg.model)
    forward = jax.jit(lambda tokens, kw: model(tokens, **kw))  # compiled: eager calls take seconds each
    return cfg, model, forward


@functools.cache
def adapters():
    _, model, _ = model_and_forward()
    return jax.jit(lambda x: model.vision(x)), jax.jit(lambda x: model.audio(x))


def media(seed=0, shape=(13, 11)):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (B, *shape, 3), dtype=np.uint8)
    audio = (0.3 * rng.standard_normal((B, 300))).astype(np.float32)
    return images, audio


def tokens(seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (B, T)), jnp.int32)


def test_adapter_shapes_and_any_image_size():
    cfg, _, _ = model_and_forward()
    vision, audio_adapter = adapters()
    images, audio = media()
    assert vision(images).shape == (B, N_IMAGE, cfg.model.d_model)
    assert audio_adapter(audio).shape == (B, N_AUDIO, cfg.model.d_model)
    assert audio_adapter(np.zeros((B, 2000), np.float32)).shape == (B, N_AUDIO, cfg.model.d_model)  # cut
    assert mm.prefix_slots(cfg.model, True, True) == N_IMAGE + N_AUDIO
    for shape in [(3, 5), (8, 8), (40, 24)]:  # smaller, equal, larger than image_size
        out = vision(media(shape=shape)[0])
        assert out.shape == (B, N_IMAGE, cfg.model.d_model) and bool(jnp.all(jnp.isfinite(out)))
    # uint8 0..255 and float 0..1 are the same picture
    np.testing.assert_allclose(vision(images), vision(images.astype(np.float32) / 255), atol=1e-5)


def test_chroma_blocks_patches_hold_brightness_and_block_chroma():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    out = np.asarray(mm.patch_features(jnp.asarray(x), 4, 2))  # 4 patches of 16 brightness + 2x2x3 colour values
    assert out.shape == (2, 4, 16 + 12)
    for i, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):  # row-major patches
        patch = x[:, r : r + 4, c : c + 4]
        np.testing.assert_allclose(out[:, i, :16], patch.max(-1).reshape(2, 16), rtol=1e-6)
        chroma = patch - patch.max(-1, keepdims=True)  # zero for grey pixels
        blocks = chroma.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))  # [B,2,2,C]: 2x2-pixel blocks
        np.testing.assert_allclose(out[:, i, 16:], blocks.reshape(2, 12), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mm.patch_features(jnp.asarray(x), 4, 0), mm.patchify(jnp.asarray(x), 4))
    grey = np.repeat(x[..., :1], 3, axis=-1)  # a grey image has no chroma: only its brightness shows
    np.testing.assert_array_equal(np.asarray(mm.patch_features(jnp.asarray(grey), 4, 2))[..., 16:], 0.0)
    vcfg = VisionConfig(enabled=True, image_size=8, patch_size=4, chroma_blocks=2)
    assert mm.patch_dim(vcfg) == 28 and mm.patch_dim(VisionConfig()) == 8 * 8 * 3


def test_frame_energy_splits_log_mel_into_shape_and_energy():
    from open_r1_jax.model import audio_features

    lm = np.random.default_rng(0).normal(-5, 3, (2, 7, 12)).astype(np.float32)
    out = np.asarray(audio_features.with_frame_energy(jnp.asarray(lm)))
    energy = np.log(np.exp(lm.astype(np.float64)).sum(-1))  # [B,F]: log of the frame's total mel power
    np.testing.assert_allclose(out[..., -1], energy, rtol=1e-5)
    np.testing.assert_allclose(out[..., :-1], lm - energy[..., None], rtol=1e-5, atol=1e-5)
    # a louder copy of a sound changes only the energy track
    louder = np.asarray(audio_features.with_frame_energy(jnp.asarray(lm + 2.0)))
    np.testing.assert_allclose(louder[..., :-1], out[..., :-1], atol=1e-5)
    np.testing.assert_allclose(louder[..., -1], out[..., -1] + 2.0, atol=1e-5)


def test_stack_images_and_audio_build_batch_arrays():
    cfg, _, _ = model_and_forward()
    vision = adapters()[0]
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    colour = rng.random((5, 6, 3), dtype=np.float32)
    images, has_image = mm.stack_images([grey, None, colour], cfg.model.vision)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.float32
    assert has_image.tolist() == [True, False, True] and not images[1].any()
    np.testing.assert_array_equal(images[0, ..., 0], images[0, ..., 2])  # grey repeated over the channels
    # the adapter's own resize is then a no-op: same embeddings as from the raw image
    np.testing.assert_allclose(vision(images[2:]), vision(colour[None]), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        mm.stack_images([np.zeros((4, 4, 2))], cfg.model.vision)
    audio, has_audio = mm.stack_audio([np.ones(100), None, np.ones(1000)], cfg.model.audio)
    assert audio.shape == (3, 480) and has_audio.tolist() == [True, False, True]
    assert audio[0, :100].all() and not audio[0, 100:].any() and audio[2].all()
    batch = {"inputs": 0, "image": images, "has_image": has_image}
    assert mm.media_kwargs(batch) == {"images": images, "has_image": has_image}


def test_rows_without_media_are_masked():
    """A row whose has_image / has_audio are False gets the text-only logits whatever its media hold;
    a row with media is changed by them. One batch shape serves both kinds of rows."""
    _, _, forward = model_and_forward()
    images, audio = media()
    tok = tokens()
    plain, _ = forward(tok, {})
    absent = {"has_image": jnp.array([True, False]), "has_audio": jnp.array([False, False])}
    with_media, _ = forward(tok, {"images": images, "audio": audio, **absent})
    other_media, _ = forward(tok, {"images": images[::-1], "audio": audio[::-1], **absent})
    assert with_media.shape == plain.shape == (B, T, 272)  # logits of text positions only
    np.testing.assert_allclose(with_media[1], plain[1], atol=1e-5)  # no media: as text only
    np.testing.assert_allclose(other_media[1], plain[1], atol=1e-5)
    assert float(jnp.max(jnp.abs(with_media[0] - plain[0]))) > 1e-3  # the image is attended to
    assert float(jnp.max(jnp.abs(other_media[0] - with_media[0]))) > 1e-3


def test_text_only_model_is_unchanged_by_disabled_adapters():
    """Adapters are built after the decoder: same seed, same decoder weights, same text logits."""
    cfg, model, forward = model_and_forward()
    text_only = build_model(load_config(None, MICRO).model)
    assert not hasattr(text_only, "vision") or text_only.vision is None
    tok = tokens(1)
    np.testing.assert_array_equal(np.asarray(forward(tok, {})[0]), np.asarray(jax.jit(lambda t: text_only(t))(tok)[0]))


def test_prefix_convention_positions_and_segments():
    """Real slots join the first document (positions 0..); its text moves after them; masked slots
    are segment 0; a packed row's second document and a left-padded row are handled."""
    valid = jnp.array([[True, True, False], [False, False, False], [True, True, True]])
    prefix = mm.Prefix(jnp.ones((3, 3, 2)), valid)
    seg = jnp.array([[1, 1, 2, 2], [1, 1, 1, 0], [0, 3, 3, 4]])
    pos = jnp.array([[0, 1, 0, 1], [0, 1, 2, 0], [0, 0, 1, 0]])
    x, positions, segments = mm.prepend(prefix, jnp.zeros((3, 4, 2)), pos, seg)
    assert x.shape == (3, 7, 2)
    np.testing.assert_array_equal(positions, [[0, 1, 1, 2, 3, 0, 1], [0, 0, 0, 0, 1, 2, 0], [0, 1, 2, 0, 3, 4, 0]])
    np.testing.assert_array_equal(segments, [[1, 1, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 0], [3, 3, 3, 0, 3, 3, 4]])


def test_loss_is_never_taken_on_prefix_slots():
    """Logits exist for text positions only (what a loss can read); logits_at indexes text positions."""
    _, model, forward = model_and_forward()
    images, audio = media()
    tok = tokens()
    full, _ = forward(tok, {"images": images, "audio": audio})
    at = jnp.array([[0, T - 1], [2, 3]])
    picked, _ = jax.jit(lambda t, i, a, at: model(t, images=i, audio=a, logits_at=at))(tok, images, audio, at)
    np.testing.assert_allclose(picked, jnp.take_along_axis(full, at[..., None], axis=1), atol=1e-5)

    from open_r1_jax.training.losses import summed_nll

    nll, n = summed_nll(full, tok, jnp.ones((B, T), bool))  # text targets and mask, [B,T]: no prefix slot in them
    assert float(n) == B * T and bool(jnp.isfinite(nll))


def test_media_without_adapter_raises(micro):
    model = build_model(micro().model)
    with pytest.raises(ValueError, match="model.vision.enabled is false"):
        model(tokens(), images=jnp.zeros((B, 8, 8, 3)))
    with pytest.raises(ValueError, match="model.audio.enabled is false"):
        model(tokens(), audio=jnp.zeros((B, 100)))
    torch = pytest.importorskip("torch")
    import torch_ref

    with pytest.raises(ValueError, match="vision.enabled is false"):
        torch_ref.Transformer(torch_ref.TorchModelConfig())(torch.zeros(1, 4).long(), images=torch.zeros(1, 8, 8, 3))


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.vision.image_size=10", "model.vision.image_size .10. must be divisible by model.vision.patch_size"),
        ("model.vision.width=18", "model.vision.width .18. must be divisible by model.vision.n_heads"),
        ("model.vision.channels=0", "model.vision.channels"),
        ("model.vision.chroma_blocks=3", "model.vision.chroma_blocks .3. must be 0 .plain RGB patches. or divide"),
        ("model.audio.f_max=3000", "model.audio.f_min / f_max"),
        ("model.audio.n_mels=64", "model.audio.n_mels .64.: mel bands"),
        ("model.audio.hop_length=0", "model.audio.hop_length"),
        ("model.audio.depth=-1", "model.audio.depth"),
        ("model.vision.resize_method=cubic", "model.vision.resize_method"),
    ],
)
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, MICRO + VISION + AUDIO + [override])


def test_disabled_adapter_keys_are_flagged_and_export_refuses_adapters():
    from open_r1_jax.config import to_dict
    from open_r1_jax.config.checks import ignored_keys
    from open_r1_jax.hf.files import check_exportable

    cfg = load_config(None, MICRO + ["model.vision.patch_size=4", "model.audio.n_mels=40"])
    flagged = dict(ignored_keys(cfg))
    assert "model.vision.patch_size" in flagged and "model.audio.n_mels" in flagged
    assert "adapter off" in flagged["model.vision.patch_size"]
    check_exportable(to_dict(cfg.model))  # disabled adapters: a text model, exportable
    with pytest.raises(ValueError, match="model.vision.enabled"):
        check_exportable(to_dict(model_and_forward()[0].model))


def test_log_mel_matches_librosa():
    """Slaney mel filters and the log-mel of a chirp plus noise against librosa (power 2, periodic Hann,
    centred frames with zero padding)."""
    librosa = pytest.importorskip("librosa")
    sr, n_fft, hop, n_mels = 8000, 256, 80, 40
    want = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=30.0, fmax=3500.0, htk=False, norm="slaney")
    np.testing.assert_allclose(mel_filters(sr, n_fft, n_mels, 30.0, 3500.0), want, rtol=1e-6, atol=1e-9)
    t = np.arange(1999) / sr  # an odd length
    wav = np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.1 * np.random.default_rng(0).standard_normal(t.size)
    wav = wav.astype(np.float32)
    ref = librosa.feature.melspectrogram(
        y=wav, sr=sr, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="constant", power=2.0,
        n_mels=n_mels, htk=False, norm="slaney",
    )  # fmt: skip
    filters = jnp.asarray(mel_filters(sr, n_fft, n_mels), jnp.float32)
    got = jax.jit(lambda w: log_mel(w, filters, n_fft, hop, 1e-10))(wav[None])
    assert got.shape == (1, ref.shape[1], n_mels)
    np.testing.assert_allclose(np.asarray(got[0]).T, np.log(np.maximum(ref, 1e-10)), atol=2e-4)


def test_torch_ref_mel_filters_match_librosa():
    librosa = pytest.importorskip("librosa")
    from torch_ref.multimodal import slaney_mel_filters

    got = slaney_mel_filters(16000, 400, 80, 0.0, 0.0).numpy()
    np.testing.assert_allclose(got, librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), rtol=1e-6, atol=1e-9)


def test_greedy_generation_with_prefix_equals_full_forward():
    """Generator.generate with images and audio (one row without an image) against the argmax of the
    full forward pass over prompt + tokens so far, row by row, step by step."""
    from open_r1_jax.generate import Generator
    from open_r1_jax.model import split_model

    cfg, model, forward = model_and_forward()
    _, params, state = split_model(model)
    gen = Generator(cfg.model, params, state)
    images, audio = media(3)
    has_image = np.array([True, False])
    prompts = [[5, 9, 11, 40], [7, 3]]
    n_new = 5
    out = gen.generate(
        prompts, n_new, images=images, has_image=has_image, audio=audio, steps_per_call=2, cache_len=None
    )
    width = max(len(p) for p in prompts) + n_new  # one compilation: right padding (segment 0) is never seen
    for i, prompt in enumerate(prompts):
        seq = list(prompt)
        row = {"images": images[i : i + 1], "has_image": has_image[i : i + 1], "audio": audio[i : i + 1]}
        for _ in range(n_new):
            padded = np.zeros((1, width), np.int32)
            padded[0, : len(seq)] = seq
            row["segment_ids"] = (np.arange(width) < len(seq)).astype(np.int32)[None]
            logits, _ = forward(padded, row)
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        assert out.tokens[i].tolist() == seq[len(prompt) :], i
    with pytest.raises(ValueError, match="one row per prompt"):
        gen.generate(prompts, 2, images=images[:1])
    with pytest.raises(ValueError, match=r"prefix \(4\) \+ prompt"):
        gen.generate(prompts, 2, images=images, cache_len=8)
