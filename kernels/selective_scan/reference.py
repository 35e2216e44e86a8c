"""PyTorch references for the Mamba-1 selective scan.

``selective_scan_ref`` is the truth the tests compare against: a plain fp32 loop over tokens that reads like
the equations. ``selective_scan_torch`` is the fast CPU path: the same recurrence vectorised over batch,
channel and state with contiguous per-token slices. Both only ever multiply decays (never divide by them), so
tiny decays underflow to zero gracefully. ``selective_state_update_ref`` is one recurrent step for decoding.

Shapes (mamba_ssm's layout): u, delta, z ``[B, D, L]``; A ``[D, N]``; B, C ``[B, N, L]`` or grouped
``[B, G, N, L]`` (channel d reads group ``d // (D // G)``); D, delta_bias ``[D]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "selective_scan_torch", "selective_state_update_ref", "expand_groups"]


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, N, L]`` or ``[B, G, N, L]`` -> per-channel ``[B, dim, N, L]`` (a view when possible)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(BC.shape[0], dim, BC.shape[1], BC.shape[2])
    g = BC.shape[1]
    return BC.repeat_interleave(dim // g, dim=1)


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so the reference can be gradchecked)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _step_sizes(delta, delta_bias, delta_softplus):
    """fp32 Δ with the bias added and softplus applied, as the kernels do before the recurrence."""
    dt = _up(delta)
    if delta_bias is not None:
        dt = dt + _up(delta_bias)[None, :, None]
    return F.softplus(dt) if delta_softplus else dt


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """fp32 copies, Δ with bias/softplus applied, B/C per channel, everything flipped when scanning backwards."""
    dim = u.shape[1]
    u32, dt = _up(u), _step_sizes(delta, delta_bias, delta_softplus)
    Bx, Cx = expand_groups(_up(B), dim), expand_groups(_up(C), dim)
    z32 = _up(z) if z is not None else None
    if reverse:
        u32, dt, Bx, Cx = u32.flip(-1), dt.flip(-1), Bx.flip(-1), Cx.flip(-1)
        z32 = z32.flip(-1) if z32 is not None else None
    return u32, dt, _up(A), Bx, Cx, z32


def _finish(y, u32, D, z32, reverse, out_dtype):
    """Skip term, SiLU gate, flip back, cast: the shared tail of every reference path."""
    if D is not None:
        y = y + u32 * _up(D)[None, :, None]
    if z32 is not None:
        y = y * F.silu(z32)
    if reverse:
        y = y.flip(-1)
    return y.to(out_dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       reverse=False, return_last_state=False):
    """Token-by-token fp32 recurrence: h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = <C_t, h_t> + D u_t."""
    u32, dt, A32, Bx, Cx, z32 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    batch, dim, L = u.shape
    h = u32.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, :, t, None] * A32)                       # [B, D, N]
        h = decay * h + (dt[:, :, t] * u32[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))                               # [B, D]
    y = torch.stack(ys, dim=-1) if ys else u32.new_zeros(batch, dim, 0)
    out = _finish(y, u32, D, z32, reverse, u.dtype)
    return (out, h.detach()) if return_last_state else out


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         reverse=False, return_last_state=False):
    """Fast fp32 PyTorch path (CPU, or any device without Triton); autograd through torch ops.

    The same recurrence as ``selective_scan_ref``, laid out for speed: token-major contiguous slices, B and C
    broadcast over each group's channels instead of expanded per channel (an expanded B/C makes every
    token's backward write a full ``[B, D, N, L]`` gradient), the C contraction as a batched matmul, and
    ``reverse`` walking the tokens backwards instead of flipping copies. One pass over the tokens does
    ~log2(chunk) times less work than a log-depth chunked scan, which measured 4-10x slower on the CPU.
    """
    batch, dim, L = u.shape
    n = A.shape[1]
    u32, dt = _up(u), _step_sizes(delta, delta_bias, delta_softplus)
    B4 = _up(B) if B.dim() == 4 else _up(B).unsqueeze(1)
    C4 = _up(C) if C.dim() == 4 else _up(C).unsqueeze(1)
    g = B4.shape[1]
    cpg = dim // g
    # token-major so that every per-token slice is contiguous
    dt_t = dt.permute(2, 0, 1).reshape(L, batch, g, cpg, 1)
    du_t = (dt * u32).permute(2, 0, 1).reshape(L, batch, g, cpg, 1)
    B_t = B4.permute(3, 0, 1, 2).unsqueeze(3)                            # [L, B, G, 1, N]
    C_t = C4.permute(3, 0, 1, 2).unsqueeze(4)                            # [L, B, G, N, 1]
    A_g = _up(A).reshape(g, cpg, n)
    h = u32.new_zeros(batch, g, cpg, n)
    ys = [None] * L
    for t in (range(L - 1, -1, -1) if reverse else range(L)):
        h = torch.exp(dt_t[t] * A_g) * h + du_t[t] * B_t[t]
        ys[t] = torch.matmul(h, C_t[t]).reshape(batch, dim)                 # y_t = <C_t, h_t>
    y = torch.stack(ys, dim=-1) if L else u32.new_zeros(batch, dim, 0)
    out = _finish(y, u32, D, _up(z) if z is not None else None, False, u.dtype)
    return (out, h.reshape(batch, dim, n).detach()) if return_last_state else out


def selective_state_update_ref(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One token of the recurrence: returns (y [B, D] in u's dtype, new fp32 state [B, D, N])."""
    dim = u.shape[1]
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()
    if delta_softplus:
        dt = F.softplus(dt)
    Bf, Cf = B.float(), C.float()
    if Bf.dim() == 3:
        Bf = Bf.repeat_interleave(dim // Bf.shape[1], dim=1)             # [B, D, N]
    else:
        Bf = Bf[:, None, :]
    if Cf.dim() == 3:
        Cf = Cf.repeat_interleave(dim // Cf.shape[1], dim=1)
    else:
        Cf = Cf[:, None, :]
    u32 = u.float()
    new_state = torch.exp(dt[..., None] * A.float()) * state.float() + (dt * u32)[..., None] * Bf
    y = (new_state * Cf).sum(-1)
    if D is not None:
        y = y + u32 * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), new_state
