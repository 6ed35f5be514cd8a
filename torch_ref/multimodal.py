"""Image and audio adapters in plain PyTorch: the fp32 reference of ``open_r1_jax/model/multimodal.py``.

Shape letters: B batch, R image side, C channels, p patch side, N patches, S samples, F mel frames,
M mel bands, Q = n_fft/2 + 1 bins, A audio tokens, W encoder width, D model width, P prefix slots.

    images [B,H,W,C] uint8 or float 0..1 -> F.interpolate to R x R (bilinear, antialias) -> [-1,1]
        -> patches [B,N,p*p*C] -> patch_embed -> Encoder -> [B,N,D]
        (chroma_blocks k > 0: per patch the max v over channels of each pixel, then the means of
        pixel - v over its k x k blocks, [B,N,p*p + k*k*C])
    audio [B,S] -> pad/cut to max_samples -> torch.stft (periodic Hann, centred, zero padding) |X|^2
        -> Slaney mel filters -> log(max(., floor)) [B,F,M] (frame_energy: [x - e, e], e = logsumexp
        over the bands) -> 2 x (Conv1d k3 s2 p1, GELU) -> Encoder
    Encoder: + pos_embed -> blocks (RMSNorm, bidirectional Attention at position 0, SwiGLU) -> RMSNorm
        -> proj_out(gelu(proj_in(x)))

The mel filters are computed here from the formulas (torch, float64), not shared with the JAX side,
so the two frontends check each other. The prefix convention (``prepend``) is that of the JAX module:
rows without media get zero, masked (segment 0) slots; real slots join the row's first document at
positions 0.. and that document's text positions move after them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.config import AttentionConfig, AudioConfig, VisionConfig
from torch_ref.layers import Attention, RMSNorm, SwiGLU


class EncoderBlock(nn.Module):
    def __init__(self, width: int, n_heads: int, ffn_dim: int, eps: float):
        super().__init__()
        self.attn_norm = RMSNorm(width, eps)
        self.attn = Attention(width, n_heads, n_heads, width // n_heads, AttentionConfig())
        self.ffn_norm = RMSNorm(width, eps)
        self.mlp = SwiGLU(width, ffn_dim)

    def forward(self, x, positions, mask):
        x = x + self.attn(self.attn_norm(x), positions, mask)
        return x + self.mlp(self.ffn_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg, n_tokens: int, d_model: int, eps: float):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(n_tokens, cfg.width))
        self.blocks = nn.ModuleList([EncoderBlock(cfg.width, cfg.n_heads, cfg.ffn_dim, eps) for _ in range(cfg.depth)])
        self.norm = RMSNorm(cfg.width, eps)
        self.proj_in = nn.Linear(cfg.width, cfg.projector_dim, bias=False)
        self.proj_out = nn.Linear(cfg.projector_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,L,W] -> [B,L,D]."""
        b, n, _ = x.shape
        x = x + self.pos_embed
        zeros = torch.zeros(b, n, dtype=torch.long)  # rotary at position 0: the identity
        mask = torch.ones(b, 1, 1, n, n, dtype=torch.bool)  # bidirectional
        for block in self.blocks:
            x = block(x, zeros, mask)
        return self.proj_out(F.gelu(self.proj_in(self.norm(x))))


class VisionAdapter(nn.Module):
    def __init__(self, cfg: VisionConfig, d_model: int, eps: float):
        super().__init__()
        self.cfg = cfg
        self.n_tokens = (cfg.image_size // cfg.patch_size) ** 2
        k = cfg.chroma_blocks
        dim = cfg.patch_size**2 + k * k * cfg.channels if k else cfg.patch_size**2 * cfg.channels
        self.patch_embed = nn.Linear(dim, cfg.width, bias=False)
        self.encoder = Encoder(cfg, self.n_tokens, d_model, eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B,H,W,C] -> [B,N,D]."""
        cfg, r, p = self.cfg, self.cfg.image_size, self.cfg.patch_size
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        b, h, w, c = x.shape
        if (h, w) != (r, r):
            mode = {"linear": "bilinear", "nearest": "nearest-exact"}[cfg.resize_method]
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(r, r), mode=mode, antialias=mode == "bilinear")
            x = x.permute(0, 2, 3, 1)  # [B,R,R,C]
        x = x * 2.0 - 1.0
        n, k = r // p, cfg.chroma_blocks

        def patches(y, side):  # [B,n*side,n*side,C'] -> [B,N,side*side*C'], row-major patches
            ch = y.shape[-1]
            return y.reshape(b, n, side, n, side, ch).permute(0, 1, 3, 2, 4, 5).reshape(b, n * n, side * side * ch)

        if k:
            value = x.amax(dim=-1, keepdim=True)  # [B,R,R,1]
            s = p // k
            chroma = (x - value).reshape(b, r // s, s, r // s, s, c).mean(dim=(2, 4))  # [B,R/s,R/s,C]
            feats = torch.cat([patches(value, p), patches(chroma, k)], dim=-1)
        else:
            feats = patches(x, p)
        return self.encoder(self.patch_embed(feats))


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """[M,Q] float64: triangles evenly spaced on the Slaney mel scale, each scaled to unit area (2/width)."""
    f_max = f_max or sample_rate / 2
    f_sp, brk = 200.0 / 3, 1000.0  # Hz per mel below the break; the break
    step = math.log(6.4) / 27.0

    def to_mel(hz: float) -> float:
        return hz / f_sp if hz < brk else brk / f_sp + math.log(hz / brk) / step

    mels = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = torch.where(mels < brk / f_sp, mels * f_sp, brk * torch.exp(step * (mels - brk / f_sp)))  # [M+2]
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [Q]
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]  # [M,1] each
    tri = torch.clamp(torch.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), min=0.0)
    return tri * (2.0 / (hi - lo))


def log_mel(wav: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """[B,S] -> [B,F,M] log-mel power spectrogram."""
    window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32)
    spec = torch.stft(
        wav, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="constant", return_complex=True
    )  # [B,Q,F]
    power = spec.real**2 + spec.imag**2
    filters = slaney_mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max).float()
    mel = torch.einsum("bqf,mq->bfm", power, filters)
    return torch.log(torch.clamp(mel, min=cfg.log_floor))


class AudioAdapter(nn.Module):
    def __init__(self, cfg: AudioConfig, d_model: int, eps: float):
        super().__init__()
        self.cfg = cfg
        conv = lambda cin: nn.Conv1d(cin, cfg.width, kernel_size=3, stride=2, padding=1, bias=False)
        self.conv1, self.conv2 = conv(cfg.n_mels + int(cfg.frame_energy)), conv(cfg.width)
        frames = 1 + (cfg.max_samples + 2 * (cfg.n_fft // 2) - cfg.n_fft) // cfg.hop_length
        self.n_tokens = math.ceil(math.ceil(frames / 2) / 2)
        self.encoder = Encoder(cfg, self.n_tokens, d_model, eps)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """[B,S] -> [B,A,D]."""
        s, n = audio.shape[1], self.cfg.max_samples
        wav = audio[:, :n] if s >= n else F.pad(audio, (0, n - s))
        x = log_mel(wav.float(), self.cfg)  # [B,F,M]
        if self.cfg.frame_energy:  # the spectrum's shape per frame, then the frame's log energy
            energy = torch.logsumexp(x, dim=-1, keepdim=True)
            x = torch.cat([x - energy, energy], dim=-1)  # [B,F,M+1]
        x = x.transpose(1, 2)  # [B,M(+1),F]
        x = F.gelu(self.conv2(F.gelu(self.conv1(x))))  # [B,W,A]
        return self.encoder(x.transpose(1, 2))


def build_prefix(vision, audio_adapter, images, has_image, audio, has_audio):
    """-> (embeds [B,P,D], valid [B,P] bool) or None when no media is given."""
    embeds, valid = [], []
    for name, adapter, media, present in (
        ("vision", vision, images, has_image),
        ("audio", audio_adapter, audio, has_audio),
    ):
        if media is None:
            continue
        if adapter is None:
            raise ValueError(f"{name} input given but {name}.enabled is false")
        e = adapter(media)  # [B,n,D]
        b, n = e.shape[:2]
        present = torch.ones(b, dtype=torch.bool) if present is None else torch.as_tensor(present, dtype=torch.bool)
        v = present[:, None].expand(b, n)
        embeds.append(torch.where(v[..., None], e, torch.zeros_like(e)))
        valid.append(v)
    return (torch.cat(embeds, 1), torch.cat(valid, 1)) if embeds else None


def prepend(embeds, valid, x, positions, segment_ids):
    """The prefix in front of x [B,T,D], positions / segment_ids [B,T] -> the same over P+T."""
    first = segment_ids.gather(1, (segment_ids > 0).long().argmax(dim=1, keepdim=True))  # [B,1]
    n_real = valid.long().sum(dim=1, keepdim=True)  # [B,1]
    text_pos = torch.where(segment_ids == first, positions + n_real, positions)
    pre_pos = torch.clamp(valid.long().cumsum(dim=1) - 1, min=0)
    pre_seg = torch.where(valid, first, torch.zeros_like(first))
    return (
        torch.cat([embeds.to(x.dtype), x], 1),
        torch.cat([pre_pos.to(positions.dtype), text_pos], 1),
        torch.cat([pre_seg.to(segment_ids.dtype), segment_ids], 1),
    )
