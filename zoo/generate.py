"""``zoo generate``: sample text from a language model (diffusion-lm or causal-lm) on the CPU or a GPU.

    zoo generate MODEL[.tag] --prompt "ROMEO:" [--length 256] [--steps N] [--block B]
                 [--sampler low_confidence|random|threshold|ddpm|ddpm_cache|ar] [--threshold 0.9]
                 [--temperature 0.8] [--seed 0] [--cache] [--num-samples 1] [--checkpoint EXPORT]

``MODEL.tag`` loads that tag's weights (from the cache, or the package); ``--checkpoint`` loads an export of
``zoo fit`` instead; a bare ``MODEL`` has random weights (a warning says so). Samplers: heads.lm.sampling.
Bad input (an empty prompt for an autoregressive model, a character outside the vocabulary, a length <= 0,
more steps than tokens, ...) is a ConfigError naming the fix.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional

from zoo.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["generate_text", "load_lm", "main", "demo"]


def load_lm(name: str, checkpoint: Optional[str] = None, device: str = "cpu"):
    """The language model ``name`` (``name.tag`` with its weights), or the export at ``checkpoint``."""
    from zoo.factory import load_named_or_export
    from zoo.kinds.language_model import LM_KINDS, load_language_model

    return load_named_or_export(name, checkpoint, device, kinds=LM_KINDS, load_export=load_language_model,
                                need="zoo generate needs a language model (zoo list --kind diffusion-lm, "
                                     "zoo list --kind causal-lm)", drop_flag="--checkpoint", logger=log)


def generate_text(model, prompt: str, length: int = 256, steps: Optional[int] = None, block: Optional[int] = None,
                  sampler: Optional[str] = None, threshold: Optional[float] = None, temperature: float = 0.0,
                  seed: int = 0, cache: bool = False, num_samples: int = 1) -> list[str]:
    """Prompt + sampled continuation of each sample, cut at the end token. Bad arguments: ConfigError (an
    over-long prompt: InputShapeError), from the model kind's ``generate``."""
    ids = model.tokenizer.encode(prompt)         # ConfigError for a character outside the vocabulary
    out = model.generate(ids, length, steps=steps, block=block, sampler=sampler, threshold=threshold,
                         temperature=temperature, seed=seed, cache=cache, batch_size=num_samples)
    return [model.tokenizer.decode(row) for row in out]


def demo(prompt: str = "ROMEO:", length: int = 128) -> int:
    """``zoo demo``'s section: a sample from every shipped language-model tag (diffusion with 32-token blocks
    and the prefix cache, AR with its key/value cache, temperature 0.8), or a line saying there is none."""
    import zoo
    from zoo.kinds.language_model import LM_KINDS
    from zoo.registry import kind_of

    tags = [n for n in zoo.list_pretrained() if kind_of(n) in LM_KINDS]
    if not tags:
        print("language models: no shipped weights yet (zoo list --kind diffusion-lm); skipping generation\n")
        return 0
    for name in tags:
        model = load_lm(name)
        kw = dict(sampler="low_confidence", steps=length // 2, block=32) if not model.causal else {}
        t0 = time.perf_counter()
        text = generate_text(model, prompt, length, temperature=0.8, cache=True, **kw)[0]
        print(f"{name} ({model.kind}, {length} characters in {time.perf_counter() - t0:.1f} s):")
        print("  " + text.replace("\n", "\n  ") + "\n")
    return len(tags)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo generate", description="sample text from a language model")
    p.add_argument("model", help="a registered language model, name.tag for trained weights (zoo list --kind diffusion-lm)")
    p.add_argument("--prompt", default="", help="text to continue (characters of the model's vocabulary)")
    p.add_argument("--length", type=int, default=256, help="tokens to generate")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: one per token)")
    p.add_argument("--block", type=int, default=None, help="semi-autoregressive block length (default: all)")
    p.add_argument("--sampler", default=None, help="low_confidence (default), random, threshold, ddpm, ddpm_cache; ar")
    p.add_argument("--threshold", type=float, default=None, help="confidence tau of the threshold sampler")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", action="store_true", help="prefix cache (diffusion) / key-value cache (AR)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--checkpoint", default=None, help="a zoo fit export of this model")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    model = load_lm(args.model, args.checkpoint, args.device)
    t0 = time.perf_counter()
    texts = generate_text(model, args.prompt, args.length, args.steps, args.block, args.sampler, args.threshold,
                          args.temperature, args.seed, args.cache, args.num_samples)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i}")
        print(text)
    log.info("%d x %d tokens in %.2f s", len(texts), args.length, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
