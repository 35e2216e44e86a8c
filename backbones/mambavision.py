"""MambaVision (NVlabs; Hatamizadeh & Kautz, CVPR 2025, arXiv 2407.08083): a hierarchical hybrid of conv
stages and windowed Mamba / attention stages, faithful to the official ``mambavision/models/mamba_vision.py``.

Layout (NCHW, four stages, total stride 32):

- stem ``patch_embed.conv_down``: Conv3x3 s2 -> BN(eps 1e-4) -> ReLU -> Conv3x3 s2 -> BN(eps 1e-4) -> ReLU;
- stages 0-1 (``levels.0``, ``levels.1``): residual ConvBlocks, Conv3x3 -> BN -> GELU(tanh) -> Conv3x3 -> BN;
- stages 2-3: windowed token stages. The map is zero-padded at the right and bottom to whole windows once
  per stage (an input smaller than a window is padded up to one), the windows go to the batch axis with
  their tokens row-major, every block of the stage runs on them (the padded tokens are not masked: they
  enter the scans and the attention, as in the official code), then the windows are put back and cropped.
  Block = x + γ1·Mixer(LN(x)); x + γ2·MLP(LN(x)) (exact GELU); the mixer is MambaVisionMixer in the first
  half of a stage and softmax attention (SDPA) in the last half (:func:`attention_blocks`);
- a stride-2 Conv3x3 (no bias, no norm) after stages 0-2 (``levels.i.downsample.reduction.0``);
- ``norm``: BatchNorm2d of the last map. ``forward_features`` ends here, unpooled (timm's contract; the
  official ``forward_features`` pools); ``forward_pool`` averages (the official head), the zoo's head is
  the Linear.

Parameter names are the official ones, so an official state dict loads with only ``backbone.`` / ``head.fc``
prefixes (zoo/families/mambavision.py). At 224 px the stage-2/3 windows (14, 7) cover the whole 14x14 and
7x7 maps and the mixing is global; at other sizes it is window-local, exactly as the official model.

Inference fast path, timm's way: ``timm.utils.reparameterize_model(model)`` returns a copy in which every
module with a ``fuse()`` is replaced by its inference form: the stem's and conv blocks' BatchNorms (and γ)
folded into the convs (:func:`fold_bn`), the token blocks' LayerNorms on ``kernels.norm`` with the mixer's
residual add inside the second norm (:class:`FusedBlock`), the mixers' fp32 scan constants precomputed
(:class:`FusedMambaVisionMixer`). The model itself keeps the official keys; the copy is for eval only (no
dropout, no drop path) and equals the model in fp32 up to rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.utils.fusion import fuse_conv_bn_weights

from backbones.layers import DropPath, Mlp, check_pool, resolve_indices, to_2tuple
from kernels.causal_conv1d import same_conv1d
from kernels.norm import layer_norm
from kernels.selective_scan import selective_scan

__all__ = ["MambaVisionConfig", "MambaVision", "MambaVisionMixer", "FusedMambaVisionMixer", "FusedBlock",
           "FusedConvBlock", "fold_bn", "attention_blocks", "window_partition",
           "window_reverse", "MAMBAVISION_CONFIGS", "build_mambavision"]

STEM_EPS = 1e-4   # the stem's BatchNorms (official)
BN_EPS = 1e-5     # every other BatchNorm
LN_EPS = 1e-5     # the token blocks' LayerNorms

POOLS = ("avg", "max", "avgmax")


@dataclass
class MambaVisionConfig:
    dim: int = 80                                        # stage-0 width; stage i has dim * 2**i
    in_dim: int = 32                                     # the stem's middle width
    depths: tuple[int, ...] = (1, 3, 8, 4)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)           # attention heads per stage (stages 2-3 use them)
    window_size: tuple[int, ...] = (8, 8, 14, 7)         # per stage (stages 2-3 use them)
    mlp_ratio: float = 4.0
    layer_scale: float | None = None                     # γ init of the token blocks (B, L, L2: 1e-5)
    layer_scale_conv: float | None = None                # γ init of the conv blocks (None in every release)
    d_state: int = 8
    d_conv: int = 3
    qkv_bias: bool = True
    in_chans: int = 3
    img_size: int | tuple[int, int] = 224                # nominal (preprocessing); any size runs
    global_pool: str = "avg"
    drop_rate: float = 0.0                               # MLP and attention-projection dropout
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2                          # official schedule: linspace over all blocks
    extra: dict = field(default_factory=dict)


def attention_blocks(depth: int) -> range:
    """Block indices of a token stage that use attention, the official rule: the last half (the smaller half
    when ``depth`` is odd, so T's stage 2 of 8 has attention at 4-7 and S's of 7 at 4-6)."""
    return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, C, H, W] (H, W multiples of ``ws``) -> windows [B * nH * nW, ws * ws, C], tokens row-major.

    One copy from NCHW memory; none from a channels-last map that is one window (224 px).
    """
    b, c, h, w = x.shape
    return x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: an NCHW view of channels-last memory [B, C, h, w]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).transpose(2, 3).reshape(-1, h, w, c)
    return x.permute(0, 3, 1, 2)


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv (with bias) equal to bn(conv(x)) in eval mode: the running statistics folded into the weights
    (``torch.nn.utils.fusion``); ``conv`` and ``bn`` are left as they are."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                    bn.eps, bn.weight, bn.bias)
    return fused


class ConvBlock(nn.Module):
    """x + γ·BN(Conv3x3(GELU_tanh(BN(Conv3x3(x))))) (official keys conv1/norm1/conv2/norm2/gamma)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim, eps=BN_EPS)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim, eps=BN_EPS)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)

    @torch.no_grad()
    def fuse(self) -> "FusedConvBlock":
        """Inference copy with both BatchNorms (and γ) folded into the convs (timm's ``fuse()`` hook)."""
        conv1, conv2 = fold_bn(self.conv1, self.norm1), fold_bn(self.conv2, self.norm2)
        if self.gamma is not None:
            conv2.weight.mul_(self.gamma.view(-1, 1, 1, 1))
            conv2.bias.mul_(self.gamma)
        return FusedConvBlock(conv1, conv2)


class FusedConvBlock(nn.Module):
    """:meth:`ConvBlock.fuse`'s result, inference only: x + Conv(GELU_tanh(Conv(x))), BN and γ in the convs."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d):
        super().__init__()
        self.conv1, self.act1, self.conv2 = conv1, nn.GELU(approximate="tanh"), conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act1(self.conv1(x)))


class MambaVisionMixer(nn.Module):
    """MambaVision's SSM mixer on tokens [B, L, C] (expand 1): in_proj splits into x and z (C/2 each); both
    go through a symmetric ('same', non-causal) depthwise conv without bias and SiLU; x is scanned
    (``kernels.selective_scan``, no gate), z is *concatenated* to the scan output, and out_proj mixes both.

    Reproduced as trained: x_proj rows [dt | B | C]; dt_proj's bias enters twice (once in dt_proj, once as
    the scan's delta_bias), so Δ = softplus(W·dt + 2b), passed here as delta_bias = 2b; no flip, one direction
    along each window's row-major tokens. All work is in the channel-first [B, C/2, L] layout the kernels take
    (projections are matmuls against it, no transposed copies of the activations). ``scan_options`` are
    keyword arguments of the scan (``variant``, ``seg``, ``chunk``, ``autotune``), empty by default.
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        if dim % 2:
            raise ValueError(f"MambaVisionMixer needs an even width (x and z take half each), got {dim}")
        if d_conv % 2 != 1:
            raise ValueError(f"MambaVisionMixer's 'same' conv needs an odd d_conv, got {d_conv}")
        self.dim, self.d_state, self.d_conv = dim, d_state, d_conv
        half = dim // 2
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.scan_options: dict = {}
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        self.A_log = nn.Parameter(torch.empty(half, d_state))
        self.D = nn.Parameter(torch.empty(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, bias=False)
        for p in (self.A_log, self.D):
            p._no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init (S4D-real A, D = 1, dt bias = inverse softplus of logU[dt_min, dt_max]); the model's
        init then re-draws every Linear, dt_proj included, as the official ``_init_weights`` does."""
        half = self.dim // 2
        for m in (self.in_proj, self.x_proj, self.out_proj, self.conv1d_x, self.conv1d_z):
            m.reset_parameters()
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D.fill_(1.0)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(half) * (math.log(self.dt_max) - math.log(self.dt_min))
                       + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mix(hidden, -torch.exp(self.A_log.float()), self.D.float(), 2 * self.dt_proj.bias.float())

    def mix(self, hidden: torch.Tensor, A: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
        """The mixer on [B, L, C] with the scan's fp32 constants given (A = -exp(A_log), D, delta_bias = 2b), so
        :class:`FusedMambaVisionMixer` can pass them precomputed."""
        h_t = hidden.transpose(1, 2)                                    # [B, C, L] view
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        x = same_conv1d(torch.matmul(w_x, h_t), self.conv1d_x.weight, activation="silu")   # [B, C/2, L]
        z = same_conv1d(torch.matmul(w_z, h_t), self.conv1d_z.weight, activation="silu")
        r, n = self.dt_rank, self.d_state
        x_dbl = torch.matmul(self.x_proj.weight, x)                     # [B, R + 2N, L]
        dt = torch.matmul(self.dt_proj.weight, x_dbl[:, :r])            # W·dt; both biases go to the scan
        y = selective_scan(x, dt, A, x_dbl[:, r:r + n], x_dbl[:, r + n:], D, z=None, delta_bias=delta_bias,
                           delta_softplus=True, **self.scan_options)
        # out_proj with the channel-first concat as a transposed operand: [B, L, C] comes out contiguous
        return F.linear(torch.cat([y, z], dim=1).transpose(1, 2), self.out_proj.weight)

    @torch.no_grad()
    def fuse(self) -> "FusedMambaVisionMixer":
        """Inference copy with the scan's constants precomputed (timm's ``fuse()`` hook)."""
        return FusedMambaVisionMixer(self)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, d_state={self.d_state}, d_conv={self.d_conv}, dt_rank={self.dt_rank}"


class FusedMambaVisionMixer(nn.Module):
    """:meth:`MambaVisionMixer.fuse`'s result, inference only: the same mixer with A = -exp(A_log), D and the
    doubled dt bias held as fp32 buffers instead of recomputed on every call."""

    def __init__(self, mixer: MambaVisionMixer):
        super().__init__()
        self.mixer = mixer
        self.register_buffer("A", -torch.exp(mixer.A_log.detach().float()))
        self.register_buffer("D", mixer.D.detach().float().clone())
        self.register_buffer("delta_bias", 2 * mixer.dt_proj.bias.detach().float())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mixer.mix(hidden, self.A, self.D, self.delta_bias)


class Attention(nn.Module):
    """Multi-head softmax attention over a window's tokens (qkv with bias, no qk-norm, SDPA, proj)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """x + γ1·mixer(LN(x)); x + γ2·MLP(LN(x)); γ only with ``layer_scale`` (keys gamma_1, gamma_2)."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop: float, drop_path: float,
                 layer_scale: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        scale = layer_scale is not None
        self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim)) if scale else None
        self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm1(x))
        x = x + self.drop_path(y * self.gamma_1 if self.gamma_1 is not None else y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y * self.gamma_2 if self.gamma_2 is not None else y)

    @torch.no_grad()
    def fuse(self) -> "FusedBlock":
        """Inference copy: the LayerNorms as the zoo's norm kernel (input dtype in and out, so no fp32 copy under
        autocast) with the first residual add inside the second norm, the mixer fused (timm's ``fuse()`` hook)."""
        mixer = self.mixer.fuse() if hasattr(self.mixer, "fuse") else self.mixer
        return FusedBlock(AddNorm(self.norm1), mixer, AddNorm(self.norm2), self.mlp, self.gamma_1, self.gamma_2)


class AddNorm(nn.Module):
    """LayerNorm of x (+ residual) by ``kernels.norm.layer_norm``; with a residual returns (norm(s), s), s = x +
    residual, in one pass. Holds the source LayerNorm's weight and bias (keys ``weight``, ``bias``)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return layer_norm(x, self.weight, self.bias, eps=self.eps)
        return layer_norm(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=True)


class FusedBlock(nn.Module):
    """:meth:`Block.fuse`'s result, inference only: h = LN1(x); y = γ1·mixer(h); (h, x) = LN2(y + x) in one
    kernel; x + γ2·MLP(h)."""

    def __init__(self, norm1: AddNorm, mixer: nn.Module, norm2: AddNorm, mlp: nn.Module,
                 gamma_1: torch.Tensor | None, gamma_2: torch.Tensor | None):
        super().__init__()
        self.norm1, self.mixer, self.norm2, self.mlp = norm1, mixer, norm2, mlp
        self.gamma_1, self.gamma_2 = gamma_1, gamma_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm1(x))
        h, x = self.norm2(y * self.gamma_1 if self.gamma_1 is not None else y, x)
        y = self.mlp(h)
        return x + (y * self.gamma_2 if self.gamma_2 is not None else y)


class Downsample(nn.Module):
    """Conv3x3 s2, C -> 2C, no bias, no norm (official key ``reduction.0``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


class Stem(nn.Module):
    """Official ``PatchEmbed``: two stride-2 Conv3x3 (no bias) each with BN(eps 1e-4) and ReLU."""

    def __init__(self, in_chans: int, in_dim: int, dim: int):
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(in_dim, eps=STEM_EPS), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim, eps=STEM_EPS), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)

    @torch.no_grad()
    def fuse(self) -> nn.Sequential:
        """Inference copy: Conv(+folded BN) -> ReLU, twice (timm's ``fuse()`` hook)."""
        c = self.conv_down
        return nn.Sequential(fold_bn(c[0], c[1]), nn.ReLU(), fold_bn(c[3], c[4]), nn.ReLU())


class MambaVisionLevel(nn.Module):
    """One stage: conv blocks, or token blocks on windows (pad once, partition, blocks, reverse, crop);
    then the downsample (stages 0-2). ``forward_blocks`` is the stage's map before the downsample."""

    def __init__(self, dim: int, depth: int, cfg: MambaVisionConfig, stage: int, drop_path: list[float]):
        super().__init__()
        self.conv = stage < 2
        self.window_size = cfg.window_size[stage]
        self.grad_checkpointing = False
        if self.conv:
            self.blocks = nn.ModuleList(ConvBlock(dim, drop_path[i], cfg.layer_scale_conv) for i in range(depth))
        else:
            attn = attention_blocks(depth)
            self.blocks = nn.ModuleList(
                Block(dim,
                      Attention(dim, cfg.num_heads[stage], cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
                      if i in attn else MambaVisionMixer(dim, cfg.d_state, cfg.d_conv),
                      cfg.mlp_ratio, cfg.drop_rate, drop_path[i], cfg.layer_scale)
                for i in range(depth))
        self.downsample = Downsample(dim) if stage < 3 else None

    def _run(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            for blk in self.blocks:
                x = self._run(blk, x)
            return x
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_r, pad_b = -w % ws, -h % ws
        if pad_r or pad_b:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        t = window_partition(x, ws)
        for blk in self.blocks:
            t = self._run(blk, t)
        x = window_reverse(t, ws, h + pad_b, w + pad_r)
        return x[:, :, :h, :w] if pad_r or pad_b else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


class MambaVision(nn.Module):
    """MambaVision backbone with the official key layout (``patch_embed``, ``levels``, ``norm``).

    ``forward_features`` -> the BatchNorm-ed last map [B, 8·dim, H/32, W/32]; ``forward_pool`` -> [B, 8·dim];
    ``forward_intermediates`` -> the four stage maps before their downsample (strides 4, 8, 16, 32), as the
    official detection/segmentation backbone takes them. Any input size and ``in_chans``.
    """

    supported_pools = POOLS

    def __init__(self, cfg: MambaVisionConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or MambaVisionConfig(**kwargs)
        for name in ("depths", "num_heads", "window_size"):
            if len(getattr(cfg, name)) != 4:
                raise ValueError(f"{name} needs 4 entries (one per stage), got {getattr(cfg, name)}")
        if min(cfg.window_size) < 1:
            raise ValueError(f"window sizes must be positive, got {cfg.window_size}")
        self.cfg = cfg
        self.global_pool = check_pool(cfg.global_pool, POOLS, "MambaVision")
        self.img_size = to_2tuple(cfg.img_size)   # nominal, for preprocessing; any size runs
        self.in_chans = cfg.in_chans
        self.num_features = cfg.dim * 8
        self.patch_embed = Stem(cfg.in_chans, cfg.in_dim, cfg.dim)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.levels = nn.ModuleList()
        self.feature_info = []
        start = 0
        for i, depth in enumerate(cfg.depths):
            dim = cfg.dim * 2 ** i
            self.levels.append(MambaVisionLevel(dim, depth, cfg, i, dpr[start:start + depth]))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"levels.{i}"))
            start += depth
        self.norm = nn.BatchNorm2d(self.num_features, eps=BN_EPS)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official ``_init_weights``: every Linear trunc-normal(0.02) with zero bias (dt_proj too, so
        training starts at Δ = softplus(0)), norms at 1 / 0; convs, A_log and D keep their own init."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- contract -----------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming the fix for an input that is not [B, in_chans, H, W] (any H, W runs)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}; build the model "
                             f"with in_chans=C for C-channel inputs")

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def group_matcher(self, coarse: bool = False) -> dict:
        blocks = r"^levels\.(\d+)" if coarse else [(r"^levels\.(\d+)\.downsample", (0,)),
                                                    (r"^levels\.(\d+)\.blocks\.(\d+)", None),
                                                    (r"^norm", (99999,))]
        return {"stem": r"^patch_embed", "blocks": blocks}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for level in self.levels:
            level.grad_checkpointing = enable

    def set_global_pool(self, pool: str) -> None:
        """Switch the pooling after build (no parameter depends on it)."""
        self.global_pool = check_pool(pool, POOLS, "MambaVision")

    # -- forward ------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        return self.norm(x)

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final map [B, C, H, W] -> [B, C]: the official average, or max / avg+max."""
        if self.global_pool == "avg":
            return x.mean(dim=(2, 3))
        if self.global_pool == "max":
            return x.amax(dim=(2, 3))
        return 0.5 * (x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pool(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage maps before their downsample (timm style ``indices``: last n stages or a list); ``norm=True``
        applies the final BatchNorm to the last stage's map (the only one it fits)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for MambaVision, got {output_fmt!r}")
        take = resolve_indices(indices, len(self.levels))
        last = max(take) if stop_early else len(self.levels) - 1
        self.check_input(x)
        x = self.patch_embed(x)
        feats = []
        for i, level in enumerate(self.levels[: last + 1]):
            y = level.forward_blocks(x)
            if i in take:
                feats.append(self.norm(y) if norm and i == len(self.levels) - 1 else y)
            x = level.downsample(y) if level.downsample is not None else y
        if intermediates_only:
            return feats
        return self.norm(x) if last == len(self.levels) - 1 else x, feats


_BASE = dict(num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7), mlp_ratio=4.0)
_LARGE = dict(_BASE, num_heads=(4, 8, 16, 32), layer_scale=1e-5, drop_path_rate=0.3)

MAMBAVISION_CONFIGS: dict[str, dict] = {
    "mambavision_t_224": dict(_BASE, dim=80, in_dim=32, depths=(1, 3, 8, 4), drop_path_rate=0.2),
    "mambavision_t2_224": dict(_BASE, dim=80, in_dim=32, depths=(1, 3, 11, 4), drop_path_rate=0.2),
    "mambavision_s_224": dict(_BASE, dim=96, in_dim=64, depths=(3, 3, 7, 5), drop_path_rate=0.2),
    "mambavision_b_224": dict(_BASE, dim=128, in_dim=64, depths=(3, 3, 10, 5), layer_scale=1e-5,
                              drop_path_rate=0.3),
    "mambavision_l_224": dict(_LARGE, dim=196, in_dim=64, depths=(3, 3, 10, 5)),
    "mambavision_l2_224": dict(_LARGE, dim=196, in_dim=64, depths=(3, 3, 12, 5)),
    "mambavision_l2_512": dict(_LARGE, dim=196, in_dim=64, depths=(3, 3, 12, 5), window_size=(8, 8, 32, 16),
                               img_size=512),
}
"""The official ``mamba_vision_*`` model functions' arguments, by registered name."""


def build_mambavision(name: str, **overrides) -> MambaVision:
    if name not in MAMBAVISION_CONFIGS:
        raise KeyError(name)
    cfg = dict(MAMBAVISION_CONFIGS[name])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("depths", "num_heads", "window_size"):
        cfg[key] = tuple(cfg[key])
    return MambaVision(MambaVisionConfig(**cfg))
