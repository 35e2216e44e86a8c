"""Bidirectional Mamba-1 token mixer (Vim's ``bimamba_type="v2"``), over tokens ``[B, L, D]``.

One shared ``in_proj`` makes x and the gate z; each direction has its own causal depthwise conv,
``x_proj`` (rows ``[dt | B | C]``), ``dt_proj``, ``A_log`` and ``D``; the two gated scan outputs are averaged
(Vim's ``if_divide_out``) and projected by the shared ``out_proj``. The backward direction runs the conv and
the scan with ``reverse=True`` instead of flipping copies of x and z, which is the same function
(flip -> causal op -> flip) without the copies. Parameter names are those of the official module, so an
official Vim checkpoint loads with only a prefix change.

All work happens in the channel-first layout ``[B, E, L]`` the kernels take: projections are batched
matmuls against that layout, so no transposes of the E-wide activations are needed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.common import needs_grad, use_triton
from kernels.mamba_mixer import VARIANTS, bimamba_inner, mamba_direction

__all__ = ["BiMambaMixer", "set_mixer_variant"]


class BiMambaMixer(nn.Module):
    """Mamba-1 mixer scanning the sequence both ways: ``[B, L, dim] -> [B, L, dim]``.

    ``divide_out=True`` averages the two directions (the released Vim models); ``False`` sums them.
    ``variant`` (constructor, or per call in ``forward``) picks the path after in_proj: "fused" (one Triton
    conv pass and one scan launch for both directions, kernels.mamba_mixer), "unfused" (each direction's
    conv and scan ops, ``_direction``), "reference" (fp32 PyTorch), "auto" (fused where the Triton path runs:
    CUDA, or TRITON_INTERPRET=1; unfused elsewhere).
    ``scan_options``: keyword arguments for both scans (``variant``, ``seg``, ``chunk``, ``autotune`` of
    kernels.selective_scan; ``channels_last`` of the fused path), empty by default so the kernel's heuristic
    decides; benchmarks set it per run.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 conv_bias: bool = True, bias: bool = False, divide_out: bool = True, variant: str = "auto"):
        super().__init__()
        self.variant = _check_variant(variant)
        self.dim = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.divide_out = divide_out
        self.scan_options: dict = {}
        self.dt_min, self.dt_max, self.dt_init_floor, self.dt_scale = dt_min, dt_max, dt_init_floor, dt_scale
        E, N, R = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * E, bias=bias)
        # Forward direction (names of the official module).
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        # Backward direction.
        self.A_b_log = nn.Parameter(torch.empty(E, N))
        self.D_b = nn.Parameter(torch.empty(E))
        self.conv1d_b = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj_b = nn.Linear(R, E, bias=True)

        self.out_proj = nn.Linear(E, dim, bias=bias)
        for p in (self.A_log, self.D, self.A_b_log, self.D_b):
            p._no_weight_decay = True  # as in mamba_ssm; optimisers built from no_weight_decay() honour it
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init: S4D-real A, D = 1, dt bias so softplus(bias) ~ logU[dt_min, dt_max].

        Both directions get the dt init. (The Vim fork builds ``dt_proj_b`` as a plain Linear whose bias its
        model init then zeroes, i.e. dt = softplus(0) = 0.69 backwards; we treat that as an accident.)
        Linear and conv weights keep PyTorch's default (kaiming-uniform), as in mamba_ssm.
        """
        for m in (self.in_proj, self.x_proj, self.x_proj_b, self.out_proj, self.conv1d, self.conv1d_b):
            m.reset_parameters()
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        std = self.dt_rank ** -0.5 * self.dt_scale
        for A_log, D, dt_proj in ((self.A_log, self.D, self.dt_proj), (self.A_b_log, self.D_b, self.dt_proj_b)):
            A_log.copy_(torch.log(A))
            D.fill_(1.0)
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(self.dt_max) - math.log(self.dt_min))
                           + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _direction(self, x: torch.Tensor, z: torch.Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
                   A_log: torch.Tensor, D: torch.Tensor, reverse: bool) -> torch.Tensor:
        """conv -> SiLU -> selective scan gated by SiLU(z), on [B, E, L]; the backward one via reverse=True."""
        opts = {k: v for k, v in self.scan_options.items() if k != "channels_last"}
        return mamba_direction(x, z, conv.weight, conv.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D,
                               reverse=reverse, **opts)

    def _in_proj(self, hidden: torch.Tensor, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x, z [B, E, L] from tokens [B, L, dim]. ``channels_last``: in_proj as one GEMM [B, L, 2E], x and z its
        channel-last views (the fused mixer's inference layout, no copies); else two GEMMs straight into
        [B, E, L], so x and z come out contiguous and the kernels (and the backward) copy nothing."""
        if channels_last:
            xz = self.in_proj(hidden).transpose(1, 2)
            return xz[:, :self.d_inner], xz[:, self.d_inner:]
        h_t = hidden.transpose(1, 2)
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        x, z = torch.matmul(w_x, h_t), torch.matmul(w_z, h_t)
        if self.in_proj.bias is not None:
            b_x, b_z = self.in_proj.bias.chunk(2)
            x, z = x + b_x.to(x.dtype)[:, None], z + b_z.to(z.dtype)[:, None]
        return x, z

    def _stacked(self) -> tuple:
        """Both directions' parameters stacked direction first, as kernels.mamba_mixer takes them."""
        def two(a, b):
            return torch.stack([a, b]) if a is not None else None
        return (two(self.conv1d.weight, self.conv1d_b.weight).flatten(2), two(self.conv1d.bias, self.conv1d_b.bias),
                two(self.x_proj.weight, self.x_proj_b.weight), two(self.dt_proj.weight, self.dt_proj_b.weight),
                two(self.dt_proj.bias, self.dt_proj_b.bias), two(self.A_log, self.A_b_log), two(self.D, self.D_b))

    def forward(self, hidden: torch.Tensor, variant: str | None = None) -> torch.Tensor:
        if hidden.dim() != 3 or hidden.shape[-1] != self.dim:
            raise ValueError(f"expected tokens [B, L, {self.dim}], got shape {tuple(hidden.shape)}")
        choice = _check_variant(variant) if variant is not None else self.variant
        if choice == "auto":
            choice = "fused" if use_triton(hidden, self.in_proj.weight) else "unfused"
        channels_last = choice == "fused" and self.scan_options.get("channels_last")
        if channels_last is None:                  # fused, by default: in inference
            channels_last = not needs_grad(hidden, *self.parameters())
        x, z = self._in_proj(hidden, channels_last=channels_last)
        if choice != "unfused":
            return bimamba_inner(x, z, *self._stacked(), self.out_proj.weight, self.out_proj.bias,
                                 divide_out=self.divide_out, variant=choice, **self._fused_scan_options())
        y = self._direction(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=False)
        y_b = self._direction(x, z, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=True)
        y = torch.lerp(y, y_b, 0.5) if self.divide_out else y + y_b  # lerp: the mean in one kernel
        return F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)

    def _fused_scan_options(self) -> dict:
        """The scan keywords under the fused op's names (its own ``variant`` picks the mixer path)."""
        opts = dict(self.scan_options)
        if "variant" in opts:
            opts["variant_scan"] = opts.pop("variant")
        return opts

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, divide_out={self.divide_out}, variant={self.variant!r}")


def _check_variant(variant: str) -> str:
    choice = str(variant).lower()
    if choice not in VARIANTS:
        raise ValueError(f"BiMambaMixer: variant must be one of {VARIANTS}, got {variant!r}")
    return choice


def set_mixer_variant(module: nn.Module, variant: str) -> nn.Module:
    """Set the path of every BiMambaMixer inside ``module`` (e.g. a whole Vim, for comparisons); returns it."""
    choice = _check_variant(variant)
    for m in module.modules():
        if isinstance(m, BiMambaMixer):
            m.variant = choice
    return module
