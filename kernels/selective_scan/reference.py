"""PyTorch references for the Mamba-1 selective scan.

``selective_scan_ref`` is the truth the tests compare against: a plain fp32 loop over tokens that reads like
the equations. ``selective_scan_chunked`` is the fast CPU path: the same math, vectorised over batch, channel
and state, with a log-depth (Hillis-Steele) scan inside chunks of tokens and a sequential carry between
chunks. It only ever multiplies decays (never divides by them), so tiny decays underflow to zero gracefully
instead of overflowing. ``selective_state_update_ref`` is one recurrent step for streaming decoding.

Shapes (mamba_ssm's layout): u, delta, z ``[B, D, L]``; A ``[D, N]``; B, C ``[B, N, L]`` or grouped
``[B, G, N, L]`` (channel d reads group ``d // (D // G)``); D, delta_bias ``[D]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "selective_scan_chunked", "selective_state_update_ref", "expand_groups"]


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, N, L]`` or ``[B, G, N, L]`` -> per-channel ``[B, dim, N, L]`` (a view when possible)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(BC.shape[0], dim, BC.shape[1], BC.shape[2])
    g = BC.shape[1]
    return BC.repeat_interleave(dim // g, dim=1)


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so the reference can be gradchecked)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """fp32 copies, Δ with bias/softplus applied, B/C per channel, everything flipped when scanning backwards."""
    dim = u.shape[1]
    u32, dt = _up(u), _up(delta)
    if delta_bias is not None:
        dt = dt + _up(delta_bias)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
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


def _scan_chunk(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of x_t = a_t x_{t-1} + b_t along the last axis in log2(T) vectorised steps."""
    T = a.shape[-1]
    step = 1
    while step < T:
        a_prev = F.pad(a[..., :-step], (step, 0), value=1.0)
        b_prev = F.pad(b[..., :-step], (step, 0), value=0.0)
        b = b + a * b_prev
        a = a * a_prev
        step *= 2
    return a, b


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           reverse=False, return_last_state=False, chunk_size: int = 64):
    """Vectorised fp32 selective scan (autograd through torch ops); the fast path on CPU.

    Within a chunk the recurrence is an associative scan over (decay, input) pairs done in log2(chunk) steps;
    between chunks the state is carried sequentially. Memory is O(B D N chunk) per chunk.
    """
    u32, dt, A32, Bx, Cx, z32 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    batch, dim, L = u.shape
    h = u32.new_zeros(batch, dim, A.shape[1])
    ys = []
    for s in range(0, L, chunk_size):
        e = min(L, s + chunk_size)
        dt_c = dt[:, :, s:e]                                              # [B, D, T]
        a = torch.exp(dt_c[:, :, None, :] * A32[None, :, :, None])        # [B, D, N, T]
        b = (dt_c * u32[:, :, s:e])[:, :, None, :] * Bx[..., s:e]
        a_s, b_s = _scan_chunk(a, b)
        hs = a_s * h[..., None] + b_s                                     # states at every token of the chunk
        ys.append((hs * Cx[..., s:e]).sum(2))                             # [B, D, T]
        h = hs[..., -1]
    y = torch.cat(ys, dim=-1) if ys else u32.new_zeros(batch, dim, 0)
    out = _finish(y, u32, D, z32, reverse, u.dtype)
    return (out, h.detach()) if return_last_state else out


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
