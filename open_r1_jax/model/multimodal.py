"""Image and audio adapters: media -> prefix embeddings that the decoder reads before the text.

Legend: B batch, R image side after resizing, C channels, p patch side, N patches = (R/p)^2,
S audio samples, F mel frames, M mel bands, A audio tokens = F/4, W encoder width, D model width,
P prefix slots (N image slots, then A audio slots).

    images [B,H,W,C] uint8 (0..255) or float (0..1)
      -> resize to R x R (jax.image.resize, ``model.vision.resize_method``; antialiased when shrinking)
      -> scale to [-1, 1] -> patches [B,N,p*p*C] -> linear patch embedding [B,N,W]
         (with ``chroma_blocks`` k: brightness patches [B,N,p*p] beside chroma block means [B,N,k*k*C])
      -> Encoder -> [B,N,D]                                                     (ViT, Dosovitskiy et al.)
    audio [B,S] float32 mono at ``model.audio.sample_rate``
      -> zero-pad / cut to max_samples -> log-mel [B,F,M] (``model/audio_features.py``; with
         ``frame_energy`` [B,F,M+1]: the spectrum's shape per frame, then the frame's log energy)
      -> 2 x (conv1d k=3 stride 2, GELU) [B,A,W] -> Encoder -> [B,A,D]           (Whisper's encoder)
    Encoder: + learned position embedding -> depth x pre-norm block (bidirectional attention, SwiGLU;
      the decoder's Attention / SwiGLU / RMSNorm) -> RMSNorm -> projector MLP (W -> hidden -> D, GELU)

The encoders' attention gets position 0 for every token (rotary at 0 is the identity): positions
come from the learned embedding. No layer has a bias, as in the decoder. GELU is the exact (erf) one.

The prefix convention (``prepend``; the decoder is causal over the prefix too, as in LLaVA):
- ``has_image`` / ``has_audio`` [B] say which rows hold media; a row without gets zero embeddings in
  those slots, and the slots are masked: segment id 0 (padding), never attended by text, never in
  the loss or the MoE statistics. Text-only and multimodal rows so share one shape (one compilation).
- Real prefix slots belong to the row's first document (its first non-zero segment id); their
  positions count 0, 1, ... over the real slots, and that document's text positions are shifted by
  the number of real slots (``text_offset``). Other documents of a packed row are unchanged.
- Logits are returned for text positions only: the loss can never be taken on a prefix slot.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from open_r1_jax.config import AttentionConfig, AudioConfig, ModelConfig, VisionConfig
from open_r1_jax.model import audio_features
from open_r1_jax.model.attention import Attention
from open_r1_jax.model.layers import RMSNorm, SwiGLU, param


class Prefix(NamedTuple):
    """The media prefix of a batch (a pytree: it crosses jit)."""

    embeds: jax.Array  # [B,P,D]
    valid: jax.Array  # [B,P] bool: the slot holds a real image or audio token


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # the erf GELU of torch's default


class EncoderBlock(nnx.Module):
    """Pre-norm: x += attn(norm(x)) with a full (bidirectional) mask; x += swiglu(norm(x))."""

    def __init__(self, width: int, n_heads: int, ffn_dim: int, eps: float, std: float, dtype, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(width, eps)
        head_dim = width // n_heads
        self.attn = Attention(width, n_heads, n_heads, head_dim, AttentionConfig(), std, dtype, rngs, causal=False)
        self.ffn_norm = RMSNorm(width, eps)
        self.mlp = SwiGLU(width, ffn_dim, std, dtype, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), positions, mask)
        return x + self.mlp(self.ffn_norm(x))


class Encoder(nnx.Module):
    """[B,L,W] features -> + position embedding -> blocks -> norm -> projector -> [B,L,D]."""

    def __init__(self, cfg: VisionConfig | AudioConfig, n_tokens: int, d_model: int, eps, std, dtype, rngs):
        w = cfg.width
        self.dtype = dtype
        self.pos_embed = param(rngs, (n_tokens, w), (None, "embed"), std)
        self.blocks = nnx.List(
            [EncoderBlock(w, cfg.n_heads, cfg.ffn_dim, eps, std, dtype, rngs) for _ in range(cfg.depth)]
        )
        self.norm = RMSNorm(w, eps)
        self.proj_in = param(rngs, (w, cfg.projector_dim), ("embed", "mlp"), std)
        self.proj_out = param(rngs, (cfg.projector_dim, d_model), ("mlp", "embed"), std)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        x = x + self.pos_embed[...].astype(self.dtype)  # [B,L,W]
        zeros = jnp.zeros((b, n), jnp.int32)  # rotary at position 0 is the identity
        mask = jnp.ones((b, 1, 1, n, n), bool)  # every token sees every token
        for block in self.blocks:
            x = block(x, zeros, mask)
        x = self.norm(x)
        c = lambda p: p[...].astype(self.dtype)
        return gelu(x @ c(self.proj_in)) @ c(self.proj_out)  # [B,L,D]


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 0..255 -> fp32 0..1; float images are taken to be in 0..1 already."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def resize(images: jax.Array, size: int, method: str) -> jax.Array:
    """[B,H,W,C] fp32 -> [B,R,R,C]. ``linear`` is bilinear with half-pixel centres, antialiased (a
    triangle filter widened by the scale) when shrinking: torch's ``interpolate(mode="bilinear",
    antialias=True)``. ``nearest`` picks the pixel under each output pixel's centre."""
    b, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images, (b, size, size, c), method=method, antialias=True)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B,R,R,C] -> [B,N,p*p*C], patches in row-major order, pixels in (row, column, channel) order."""
    b, r, _, c = x.shape
    n = r // p
    x = x.reshape(b, n, p, n, p, c).transpose(0, 1, 3, 2, 4, 5)  # [B,R/p,R/p,p,p,C]
    return x.reshape(b, n * n, p * p * c)


def patch_features(x: jax.Array, p: int, chroma_blocks: int) -> jax.Array:
    """[B,R,R,C] -> [B,N,p*p*C] pixels, or with ``chroma_blocks`` k > 0 -> [B,N,p*p + k*k*C]: the
    brightness v (max over channels) of each pixel, then the chroma (pixel - v, zero for any grey)
    averaged over each of the patch's k x k blocks (row-major).

    Why: with raw RGB patches the embedding learns a triangle in red and a triangle in blue as
    different filters over different inputs, so a colour never seen with a shape shows no learned
    shape at all. Chroma rather than colour: a grey background (or a white shape) adds nothing to it,
    so a block's chroma is the hue and saturation of what covers it, whatever the light.
    ``benchmarks/adapter_probe.py`` measures both front ends (docs/multimodal.md)."""
    if not chroma_blocks:
        return patchify(x, p)
    b, r, _, c = x.shape
    s = p // chroma_blocks  # block side in pixels
    value = jnp.max(x, axis=-1, keepdims=True)  # [B,R,R,1]
    chroma = (x - value).reshape(b, r // s, s, r // s, s, c).mean(axis=(2, 4))  # [B,R/s,R/s,C] block means
    return jnp.concatenate([patchify(value, p), patchify(chroma, chroma_blocks)], axis=-1)


def patch_dim(cfg: VisionConfig) -> int:
    """Values per patch that the patch embedding reads (``patch_features``)."""
    p, k = cfg.patch_size, cfg.chroma_blocks
    return p * p + k * k * cfg.channels if k else p * p * cfg.channels


class VisionAdapter(nnx.Module):
    def __init__(self, cfg: VisionConfig, d_model: int, eps: float, std: float, dtype, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        self.n_tokens = (cfg.image_size // cfg.patch_size) ** 2  # N
        self.patch_embed = param(rngs, (patch_dim(cfg), cfg.width), (None, "embed"), std)
        self.encoder = Encoder(cfg, self.n_tokens, d_model, eps, std, dtype, rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images [B,H,W,C] uint8 or float (any H, W) -> [B,N,D]."""
        cfg = self.cfg
        x = resize(to_unit_range(images), cfg.image_size, cfg.resize_method)  # [B,R,R,C]
        x = patch_features(x * 2.0 - 1.0, cfg.patch_size, cfg.chroma_blocks).astype(self.dtype)  # in [-1,1]
        return self.encoder(x @ self.patch_embed[...].astype(self.dtype))


def conv1d(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [B,L,Cin], w [3,Cin,Cout] -> [B,ceil(L/2),Cout]: kernel 3, stride 2, one zero on each side."""
    return jax.lax.conv_general_dilated(x, w, (2,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))


def fit_length(audio: jax.Array, n: int) -> jax.Array:
    """[B,S] -> [B,n]: cut, or zero-padded (silence) at the end."""
    s = audio.shape[1]
    return audio[:, :n] if s >= n else jnp.pad(audio, ((0, 0), (0, n - s)))


def audio_tokens(cfg: AudioConfig) -> int:
    """A: prefix slots of one clip (two stride-2 convolutions over the mel frames)."""
    f = audio_features.n_frames(cfg.max_samples, cfg.n_fft, cfg.hop_length)
    half = (f + 1) // 2  # ceil(F/2) after the first convolution
    return (half + 1) // 2


class AudioAdapter(nnx.Module):
    def __init__(self, cfg: AudioConfig, d_model: int, eps: float, std: float, dtype, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        self.n_tokens = audio_tokens(cfg)
        self.conv1 = param(rngs, (3, cfg.n_mels + int(cfg.frame_energy), cfg.width), (None, None, "embed"), std)
        self.conv2 = param(rngs, (3, cfg.width, cfg.width), (None, None, "embed"), std)
        self.encoder = Encoder(cfg, self.n_tokens, d_model, eps, std, dtype, rngs)

    def __call__(self, audio: jax.Array) -> jax.Array:
        """audio [B,S] float mono (any S: zero-padded or cut to max_samples) -> [B,A,D]."""
        cfg = self.cfg
        wav = fit_length(audio, cfg.max_samples)  # [B,S]
        # the filters are a constant of the config (not a weight: nothing to checkpoint or export)
        filters = audio_features.mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)  # [M,Q]
        feats = audio_features.log_mel(wav, jnp.asarray(filters, jnp.float32), cfg.n_fft, cfg.hop_length, cfg.log_floor)
        if cfg.frame_energy:
            feats = audio_features.with_frame_energy(feats)  # [B,F,M+1]
        c = lambda p: p[...].astype(self.dtype)
        x = gelu(conv1d(feats.astype(self.dtype), c(self.conv1)))  # [B,F/2,W]
        x = gelu(conv1d(x, c(self.conv2)))  # [B,A,W]
        return self.encoder(x)


# ----------------------------------------------------------------------------- the prefix convention


def build_prefix(vision, audio_adapter, images, has_image, audio, has_audio, dtype) -> Prefix | None:
    """Adapters (None when disabled) and media -> the prefix, or None when no media is given.

    images [B,H,W,C] / audio [B,S] with has_image / has_audio [B] bool (None = every row has one).
    Rows without media get zero embeddings in masked slots (see the module docstring)."""
    parts = []
    for name, adapter, media, present in (
        ("vision", vision, images, has_image),
        ("audio", audio_adapter, audio, has_audio),
    ):
        if media is None:
            continue
        if adapter is None:
            raise ValueError(f"{name} input given but model.{name}.enabled is false")
        embeds = adapter(media)  # [B,n,D]
        b, n = embeds.shape[:2]
        present = jnp.ones((b,), bool) if present is None else jnp.asarray(present, bool)
        valid = jnp.broadcast_to(present[:, None], (b, n))
        parts.append(Prefix(jnp.where(valid[..., None], embeds, 0).astype(dtype), valid))
    if not parts:
        return None
    return Prefix(jnp.concatenate([p.embeds for p in parts], 1), jnp.concatenate([p.valid for p in parts], 1))


def prefix_slots(cfg: ModelConfig, images: bool, audio: bool) -> int:
    """P: the prefix slots of a batch with images and/or audio (the adapters' fixed token counts)."""
    n_image = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    return (n_image if images else 0) + (audio_tokens(cfg.audio) if audio else 0)


def text_offset(prefix: Prefix) -> jax.Array:
    """[B] real prefix slots of each row: the first document's text positions start there."""
    return jnp.sum(prefix.valid, axis=1, dtype=jnp.int32)


def prefix_positions(prefix: Prefix) -> jax.Array:
    """[B,P] 0, 1, ... over the real slots (masked slots repeat their neighbour's; they are never read)."""
    return jnp.maximum(jnp.cumsum(prefix.valid, axis=1, dtype=jnp.int32) - 1, 0)


def prepend(prefix: Prefix, x, positions, segment_ids):
    """x [B,T,D], positions / segment_ids [B,T] -> the same over [B,P+T] with the prefix in front."""
    first = jnp.take_along_axis(segment_ids, jnp.argmax(segment_ids > 0, axis=1)[:, None], axis=1)  # [B,1]
    shifted = jnp.where(segment_ids == first, positions + text_offset(prefix)[:, None], positions)
    x = jnp.concatenate([prefix.embeds.astype(x.dtype), x], axis=1)
    positions = jnp.concatenate([prefix_positions(prefix).astype(positions.dtype), shifted], axis=1)
    segment_ids = jnp.concatenate([jnp.where(prefix.valid, first, 0).astype(segment_ids.dtype), segment_ids], 1)
    return x, positions, segment_ids


# ----------------------------------------------------------------------------- batches (host side)

# batch key (the data record's reserved names ``image`` / ``audio``, data/shards.py) -> model argument
BATCH_KEYS = {"image": "images", "has_image": "has_image", "audio": "audio", "has_audio": "has_audio"}


def media_kwargs(batch: dict) -> dict:
    """The media a batch holds, as keyword arguments of ``Transformer.__call__`` (none: text only)."""
    return {arg: batch[key] for key, arg in BATCH_KEYS.items() if key in batch}


def stack_images(images: list, cfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per row an image ([H,W,C] or [H,W], uint8 or float 0..1, any size) or None -> (images fp32
    [B,R,R,C] in 0..1, has_image [B] bool): the ``image`` / ``has_image`` arrays of a batch. Each image
    is resized here as the adapter would (then the adapter's resize is a no-op); grey images are
    repeated over the channels."""
    r, c = cfg.image_size, cfg.channels
    out = np.zeros((len(images), r, r, c), np.float32)
    for i, img in enumerate(images):
        if img is None:
            continue
        img = jnp.asarray(img)
        img = img[..., None] if img.ndim == 2 else img
        img = jnp.broadcast_to(img, (*img.shape[:2], c)) if img.shape[-1] == 1 else img
        if img.shape[-1] != c:
            raise ValueError(f"image {i}: {img.shape[-1]} channels; model.vision.channels is {c}")
        out[i] = np.asarray(resize(to_unit_range(img)[None], r, cfg.resize_method)[0])
    return out, np.array([img is not None for img in images])


def stack_audio(clips: list, cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per row a mono float waveform [S] at ``sample_rate`` or None -> (audio fp32 [B,max_samples]
    zero-padded or cut, has_audio [B] bool): the ``audio`` / ``has_audio`` arrays of a batch."""
    out = np.zeros((len(clips), cfg.max_samples), np.float32)
    for i, clip in enumerate(clips):
        if clip is not None:
            clip = np.asarray(clip, np.float32).reshape(-1)[: cfg.max_samples]
            out[i, : clip.size] = clip
    return out, np.array([clip is not None for clip in clips])
