"""Samplers for the language models, all behind one :func:`generate`.

Masked diffusion (``diffusion-lm``), the sequence starts as ``prompt + [MASK] * length``:

- ``low_confidence`` (LLaDA): each step predicts every masked token (argmax of logits / temperature +
  Gumbel noise) and commits the k most confident (softmax probability of the prediction), k from a linear
  schedule (the block's masks spread evenly over its steps, remainder to the first ones); the rest stay
  masked. ``random``: the same with random confidences (random remasking).
- ``threshold`` (Fast-dLLM's confidence-aware parallel decoding): commit every masked token of the block
  whose confidence exceeds ``threshold``, at least the most confident one per step; steps are as many as
  the block needs.
- ``ddpm`` (MDLM): a time grid from 1 to 0 in ``steps``; from t to s each masked token is revealed with
  probability (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from the prediction. ``ddpm_cache``
  reuses the last prediction while nothing changed (MDLM's cached sampler; the same numbers come out).
- Semi-autoregressive blocks (``block``): the generation is split into blocks of ``block`` tokens decoded
  left to right, ``steps / blocks`` steps each; confidence beyond the current block is -inf.
- ``cache="prefix"``: Fast-dLLM's block-wise approximate prefix cache. At each block start one full pass
  stores what the committed prefix's layers hold (softmax keys/values, GLA's forward state: the carried
  recurrent state) and the block's other steps run on the block and the suffix only. Exact for a causal
  network; an approximation for a bidirectional one (the prefix's states would change with the suffix).
- Variable length: once every sequence has committed the end token, the positions after it are filled with
  the end token and decoding stops.

Autoregressive (``causal-lm``): one token at a time from softmax(logits / temperature) (greedy at 0),
through the key/value cache and carried state when every layer keeps one, by recomputation otherwise.

Random numbers come from one ``torch.Generator`` seeded by ``seed`` on the model's device (a CPU generator on
the CPU, the GPU's own on CUDA, so a batch-64 step does not draw and copy megabytes of noise from the host) and
are drawn in the same order whatever the cache: a run is deterministic under its seed on a device, and cached,
uncached and graphed samplers draw alike.

``graphs=True`` (CUDA): every decoding step is the same full forward of a fixed ``[B, P + length]`` window, so
it is captured once in a CUDA graph and replayed (a small decoder's step is a few hundred kernel launches,
bound by the host, not the GPU). With the prefix cache, each block's windowed forward (fixed window, the
block's fixed prefix, nothing appended) is captured once per block and replayed for that block's steps, the
refresh pass staying eager. For the AR twin it decodes on the padded full window without a key/value cache
(positions after the current one are ignored by causality), the graphable form of AR decoding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["generate", "SAMPLERS", "DIFFUSION_SAMPLERS", "SampleStats", "check_generate_args",
           "linear_schedule", "gumbel_argmax"]

DIFFUSION_SAMPLERS = ("low_confidence", "random", "threshold", "ddpm", "ddpm_cache")
SAMPLERS = DIFFUSION_SAMPLERS + ("ar",)


@dataclass
class SampleStats:
    """What a generation cost: model forwards (full or cached) and decoding steps."""

    forwards: int = 0
    cached_forwards: int = 0
    steps: int = 0
    tokens: int = 0
    per_block_steps: list[int] = field(default_factory=list)


def linear_schedule(masked: int, steps: int) -> list[int]:
    """LLaDA's tokens-per-step: ``masked`` spread over ``steps``, the remainder to the first steps."""
    base, rem = divmod(masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def gumbel_argmax(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None) -> torch.Tensor:
    """argmax(logits / T + Gumbel) = a draw from softmax(logits / T); the plain argmax at T = 0.

    ``noise`` holds U(0, 1) numbers of the logits' shape (LLaDA draws them in float64; so do we)."""
    if temperature == 0 or noise is None:
        return logits.argmax(-1)
    g = -torch.log(-torch.log(noise.double().clamp(1e-20, 1 - 1e-12)))
    return (logits.double() / temperature + g.to(logits.device)).argmax(-1)


def check_generate_args(model, prompt: torch.Tensor, length: int, steps: int | None, block: int | None,
                        sampler: str, threshold: float | None, temperature: float) -> tuple[int, int]:
    """ValueError naming the fix for arguments no sampler can honour; returns (steps, block)."""
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive number of tokens, got {length!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if prompt.dim() != 2:
        raise ValueError(f"prompt ids must be [P] or [B, P], got shape {tuple(prompt.shape)}")
    vocab = model.vocab_size
    if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= vocab):
        raise ValueError(f"prompt ids must lie in [0, {vocab}), got {int(prompt.min())}..{int(prompt.max())}")
    if prompt.shape[1] + length > model.max_len:
        raise ValueError(f"prompt ({prompt.shape[1]}) + length ({length}) exceed the model's {model.max_len} "
                         f"positions; shorten one of them")
    if model.causal:
        if sampler != "ar":
            raise ValueError(f"an autoregressive model samples with sampler='ar', not {sampler!r}")
        if prompt.shape[1] == 0:
            raise ValueError("an autoregressive model needs a prompt of at least one token to continue")
        return length, length
    if sampler not in DIFFUSION_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} for a diffusion model; choose one of {DIFFUSION_SAMPLERS}")
    block = length if block is None else block
    if not isinstance(block, int) or block <= 0 or length % block:
        raise ValueError(f"block ({block}) must be a positive divisor of length ({length})")
    blocks = length // block
    if sampler == "threshold":
        if threshold is None or not 0 < threshold <= 1:
            raise ValueError(f"the threshold sampler needs threshold in (0, 1], got {threshold}")
    steps = length if steps is None else steps
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps > length:
        raise ValueError(f"steps ({steps}) exceed the {length} tokens to generate; at most one step per token "
                         f"(use steps <= length)")
    if steps % blocks:
        raise ValueError(f"steps ({steps}) must split evenly over the {blocks} blocks of {block} tokens")
    return steps, block


class _Rng:
    """All random numbers of one generation, from one generator seeded by ``seed`` on the model's device."""

    def __init__(self, seed: int, device):
        self.device = torch.device(device)
        self.g = torch.Generator(device=self.device).manual_seed(int(seed))

    def uniform(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g, dtype=torch.float64, device=self.device)


class _GraphedForward:
    """``model(x)`` for one fixed input shape, captured once in a CUDA graph and replayed per call.

    Warm-up runs on a side stream first (kernel autotuning and lazy initialisation must not happen inside the
    capture); autocast, when active, is re-entered without its weight-cast cache, whose tensors would be freed
    under the graph when the caller's autocast context exits."""

    def __init__(self, model, example: torch.Tensor):
        self.model = model
        self.x = example.clone()
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        self.amp = lambda: torch.autocast("cuda", dtype=dtype, enabled=dtype is not None, cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self.amp():
            for _ in range(2):
                model(self.x)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), self.amp():
            self.out = model(self.x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.out


def _predict(model, x: torch.Tensor, cache: "_PrefixCache | None", start: int, refresh: bool,
             stats: SampleStats, graphed: "_GraphedForward | None" = None) -> torch.Tensor:
    """Logits of positions ``start:`` (fp32). With a cache: ``refresh`` stores the prefix ``[0, start)`` from
    a full pass; otherwise only the window ``x[:, start:]`` runs, on the stored prefix. ``graphed``: the pass
    replayed from its CUDA graph (without a cache the full one, with it the block's windowed one)."""
    if cache is None:
        stats.forwards += 1
        return (graphed or model)(x)[:, start:].float()
    if refresh:
        stats.forwards += 1
        cache.clear()
        return model(x, cache=cache.cache, commit=start)[:, start:].float()
    stats.cached_forwards += 1
    return (graphed or cache.window)(x[:, start:]).float()


@torch.no_grad()
def _diffusion(model, prompt: torch.Tensor, length: int, steps: int, block: int, sampler: str,
               threshold: float | None, temperature: float, rng: _Rng, use_cache: bool, stats: SampleStats,
               graphs: bool = False):
    mask_id, end_id = model.tokenizer.mask_id, model.tokenizer.end_id
    B, P = prompt.shape
    L = P + length
    x = torch.cat([prompt, torch.full((B, length), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    blocks = length // block
    per_block = steps // blocks
    cache = _PrefixCache(model) if use_cache else None
    graphed = _GraphedForward(model, x) if graphs and cache is None else None
    V = model.vocab_size
    for b in range(blocks):
        lo, hi = P + b * block, P + (b + 1) * block
        n_steps = 0
        schedule = linear_schedule(block, per_block)
        logits, fresh = None, True
        window = None  # graphs with the cache: this block's windowed forward on its prefix, captured once
        k = 0
        while bool((x[:, lo:hi] == mask_id).any()):
            if sampler == "ddpm_cache" and logits is not None and not changed:
                pass  # nothing was revealed last step: the prediction is the same
            else:
                if graphs and cache is not None and not fresh and window is None:
                    window = _GraphedForward(cache.window, x[:, lo:])  # reads the block's prefix, stores nothing
                logits = _predict(model, x, cache, lo, fresh, stats, window or graphed)  # positions lo .. L - 1
            fresh = False
            logits[..., mask_id] = float("-inf")
            window_masked = x[:, lo:] == mask_id
            noise = rng.uniform(B, L - lo, V) if temperature > 0 else None
            x0 = gumbel_argmax(logits, temperature, noise)
            if sampler in ("ddpm", "ddpm_cache"):
                # time grid 1 -> 0 over the block's steps: reveal with prob (alpha_s - alpha_t) / (1 - alpha_t)
                t, s = 1 - k / per_block, 1 - (k + 1) / per_block
                reveal = rng.uniform(B, L - lo) < (t - s) / t
                reveal[:, hi - lo:] = False
                commit = reveal & window_masked
                if k == per_block - 1:  # the last step reveals whatever is left in the block
                    commit[:, : hi - lo] = window_masked[:, : hi - lo]
            else:
                p = logits.softmax(-1)
                conf = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1).double()
                if sampler == "random":
                    conf = rng.uniform(B, L - lo)
                conf = torch.where(window_masked, conf, torch.full_like(conf, float("-inf")))
                conf[:, hi - lo:] = float("-inf")  # semi-AR: nothing beyond the current block
                commit = torch.zeros_like(window_masked)
                if sampler == "threshold":
                    commit = conf > threshold
                    best = conf.argmax(-1, keepdim=True)  # at least one token per step (per sequence)
                    has_mask = window_masked[:, : hi - lo].any(-1, keepdim=True)
                    commit.scatter_(-1, best, has_mask)
                else:  # every sequence has as many masks left in the block: k of the linear schedule each
                    n = schedule[k] if k < per_block else int(window_masked[:, : hi - lo].sum(-1).max())
                    commit.scatter_(-1, conf.topk(n, -1).indices, True)
                commit &= window_masked
            changed = bool(commit.any())
            x[:, lo:] = torch.where(commit, x0, x[:, lo:])
            k += 1
            n_steps += 1
        stats.steps += n_steps
        stats.per_block_steps.append(n_steps)
        ended = (x[:, P:hi] == end_id).any(-1)
        if bool(ended.all()) and hi < L:  # every sequence has ended: pad the rest with the end token
            x[:, hi:] = end_id
            break
    return _after_end(x, P, end_id)


def _after_end(x: torch.Tensor, P: int, end_id: int) -> torch.Tensor:
    """Everything after a sequence's first end token becomes the end token (variable-length output)."""
    gen = x[:, P:]
    seen = (gen == end_id).long().cumsum(-1) > 0
    x[:, P:] = torch.where(seen, torch.full_like(gen, end_id), gen)
    return x


class _PrefixCache:
    """The decoder cache of the current block's prefix, emptied at each refresh."""

    def __init__(self, model):
        self.model = model
        self.cache = model.new_cache()

    def clear(self) -> None:
        self.cache = self.model.new_cache()

    def window(self, w: torch.Tensor) -> torch.Tensor:
        """The logits of window ``w`` on the stored prefix, storing nothing (``commit=0``)."""
        return self.model(w, cache=self.cache, commit=0)


@torch.no_grad()
def _autoregressive(model, prompt: torch.Tensor, length: int, temperature: float, rng: _Rng, use_cache: bool,
                    stats: SampleStats, graphs: bool = False) -> torch.Tensor:
    end_id, mask_id = model.tokenizer.end_id, model.tokenizer.mask_id
    B, P = prompt.shape
    if graphs:
        return _autoregressive_graphed(model, prompt, length, temperature, rng, stats)
    x = prompt
    cache = model.new_cache() if use_cache else None
    stats.forwards += 1
    logits = model(x, cache=cache, commit=P)[:, -1].float() if use_cache else model(x)[:, -1].float()
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for i in range(length):
        logits[:, mask_id] = float("-inf")
        noise = rng.uniform(B, logits.shape[-1]) if temperature > 0 else None
        nxt = gumbel_argmax(logits, temperature, noise)
        nxt = torch.where(done, torch.full_like(nxt, end_id), nxt)
        done |= nxt == end_id
        x = torch.cat([x, nxt[:, None]], 1)
        stats.steps += 1
        if bool(done.all()):
            x = torch.cat([x, torch.full((B, length - i - 1), end_id, dtype=x.dtype, device=x.device)], 1)
            break
        if i == length - 1:
            break
        if use_cache:
            stats.cached_forwards += 1
            logits = model(nxt[:, None], cache=cache, commit=1)[:, -1].float()
        else:
            stats.forwards += 1
            logits = model(x)[:, -1].float()
    return x


@torch.no_grad()
def _autoregressive_graphed(model, prompt: torch.Tensor, length: int, temperature: float, rng: _Rng,
                            stats: SampleStats) -> torch.Tensor:
    """AR decoding on the full ``[B, P + length]`` window (not yet generated positions hold the end token; a
    causal network never reads them), each step one replay of the captured forward; same draws as above."""
    end_id, mask_id = model.tokenizer.end_id, model.tokenizer.mask_id
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, length), end_id, dtype=prompt.dtype, device=prompt.device)], 1)
    graphed = _GraphedForward(model, x)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for i in range(length):
        stats.forwards += 1
        logits = graphed(x)[:, P + i - 1].float()
        logits[:, mask_id] = float("-inf")
        noise = rng.uniform(B, logits.shape[-1]) if temperature > 0 else None
        nxt = gumbel_argmax(logits, temperature, noise)
        nxt = torch.where(done, torch.full_like(nxt, end_id), nxt)
        done |= nxt == end_id
        x[:, P + i] = nxt
        stats.steps += 1
        if bool(done.all()):
            break
    return x


def generate(model, prompt_ids, length: int, steps: int | None = None, block: int | None = None,
             sampler: str | None = None, threshold: float | None = None, temperature: float = 0.0,
             seed: int = 0, cache: bool = False, batch_size: int | None = None, return_stats: bool = False,
             graphs: bool = False):
    """Sample ``length`` tokens after ``prompt_ids`` (``[P]``, a list, or ``[B, P]``) with ``model``.

    ``sampler``: one of :data:`DIFFUSION_SAMPLERS` for a diffusion model (default ``low_confidence``), ``ar``
    for a causal one (the default there). ``steps`` (default: one per token) and ``block`` (default: the
    whole length) shape the diffusion schedule; ``threshold`` is the parallel decoder's tau; ``temperature``
    0 is greedy. ``cache=True``: the prefix cache (diffusion) / the key-value and state cache (AR); ignored
    for layouts without one (Mamba). ``batch_size`` repeats a single prompt. ``graphs=True`` (CUDA): each step
    replays a captured CUDA graph of the full-window forward, or with ``cache`` (diffusion) of the block's
    windowed forward. Returns ids
    ``[B, P + length]`` (and :class:`SampleStats` with ``return_stats``).
    """
    device = next(model.parameters()).device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if prompt.dim() == 1:
        prompt = prompt[None]
    if batch_size is not None:
        if prompt.shape[0] != 1 or batch_size < 1:
            raise ValueError("batch_size repeats a single prompt; pass one prompt and batch_size >= 1")
        prompt = prompt.expand(batch_size, -1).contiguous()
    sampler = sampler or ("ar" if model.causal else "low_confidence")
    steps, block = check_generate_args(model, prompt, length, steps, block, sampler, threshold, temperature)
    use_cache = bool(cache) and model.backbone.supports_cache
    if graphs and (device.type != "cuda" or (cache and model.causal)):
        raise ValueError("graphs=True replays CUDA graphs of the decoding forwards: it needs the model on a CUDA "
                         "device" + (f" (it is on {device})" if device.type != "cuda" else
                                     ", and for an AR model cache=False (its graphable form decodes on the full "
                                     "window)"))
    was_training = model.training
    model.eval()
    stats = SampleStats(tokens=length * prompt.shape[0])
    rng = _Rng(seed, device)
    try:
        if model.causal:
            out = _autoregressive(model, prompt, length, temperature, rng, use_cache, stats, graphs)
        else:
            out = _diffusion(model, prompt.clone(), length, steps, block, sampler, threshold, temperature, rng,
                             use_cache, stats, graphs)
    finally:
        model.train(was_training)
    return (out, stats) if return_stats else out
