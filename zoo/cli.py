"""The ``zoo`` command: list, info, demo, fit, eval, bench.

``fit`` hands its arguments to the Lightning recipe CLI, ``eval`` to the evaluator and ``bench`` to the
benchmark modules, so each keeps its own argument parser and help.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from zoo.errors import ZooError

from zoo.bench import BENCHMARKS


def _cmd_list(args) -> int:
    import zoo
    from zoo.registry import get_entry, kind_of

    names = zoo.list_models(args.pattern, pretrained=args.pretrained, kind=args.kind)
    if not names:
        print(f"no models match {args.pattern!r}" + (f" of kind {args.kind}" if args.kind else ""))
        return 1
    width = max(len(n) for n in names)
    for name in names:  # a name.tag shows its tag's kind, an architecture every kind it serves
        entry = get_entry(name)
        kinds = kind_of(name) if "." in name else ",".join(entry.kinds)
        print(f"{name:<{width}}  {kinds:<6} {entry.family:<6} {entry.description}")
    return 0


def _fmt_metrics(metrics: dict) -> str:
    return "; ".join(f"{ds}: " + ", ".join(f"{k} {v}" for k, v in m.items()) for ds, m in metrics.items()) or "—"


def _cmd_info(args) -> int:
    import zoo

    info = zoo.model_info(args.name, flops=not args.no_flops)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['name']}  ({info['kind']}, family {info['family']})")
    print(f"  {info['description']}")
    if info["paper"]:
        print(f"  paper: {info['paper']}")
    print(f"  parameters: {info['params']:,} ({info['params'] / 1e6:.2f} M)")
    if "gflops" in info:
        print(f"  GFLOPs at {tuple(info['input_size'])}: {info['gflops']:.3f} (batch 1, matmuls and convs)")
    cfg = info["input"]
    front = " (log-mel spectrogram)" if cfg.get("audio") else f", {cfg.get('interpolation')}, crop_pct {cfg.get('crop_pct')}"
    print(f"  {'input' if '.' in info['name'] else 'default input'}: {cfg['input_size']}, mean {cfg.get('mean')}, "
          f"std {cfg.get('std')}{front}; {info['num_classes']} classes")
    if not info["pretrained"]:
        print("  pretrained: none")
    for tagged, t in info["pretrained"].items():
        pre = t["preprocess"]
        print(f"  pretrained {tagged}  ({t['kind']}, input {pre.get('input_size')}, mean {pre.get('mean')}, "
              f"std {pre.get('std')})")
        sha = f"{t['sha256']} ({t['sha256_from']})" if t["sha256"] else "(not recorded yet)"
        print(f"    source {t['source']}  sha256 {sha}  license {t['license'] or '—'}")
        print(f"    metrics: {_fmt_metrics(t['metrics'])}")
    return 0


def _cmd_demo(args) -> int:
    from zoo.demo import run_demo

    return run_demo(list_only=args.list_only)


def _cmd_bench(argv: list[str]) -> int:
    """``zoo bench`` alone lists the installed benchmarks; ``zoo bench NAME ...`` runs one."""
    if argv and argv[0] in BENCHMARKS:
        return _cmd_passthrough(BENCHMARKS[argv[0]][0], argv[1:])
    out = sys.stdout if not argv else sys.stderr
    if argv:
        print(f"unknown benchmark {argv[0]!r}", file=out)
    print("usage: zoo bench NAME [args]  (zoo bench NAME --help for its options)", file=out)
    for name, (_, what) in BENCHMARKS.items():
        print(f"  {name:<12} {what}", file=out)
    print("Peer comparisons (mamba_ssm, causal-conv1d, fla, kernel resources) are the lab in a checkout's "
          "benchmarks/ folder: python -m benchmarks.<name>", file=out)
    return 2 if argv else 0


def _cmd_passthrough(module: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo", description="speedzoo: efficient architectures by name.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered models")
    s.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'vim_*'")
    s.add_argument("--pretrained", action="store_true", help="list name.tag for every pretrained weight set")
    s.add_argument("--kind", default=None, help="a model kind (zoo.KINDS: image, audio, ...)")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("info", help="architecture, size, cost and pretrained weights of a model")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("demo", help="list the zoo and classify bundled CIFAR-10 images and spoken digits")
    s.add_argument("--list-only", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_demo)

    sub.add_parser("fit", help="train with a recipe: zoo fit --config configs/<recipe>.yaml [overrides]", add_help=False)
    sub.add_parser("eval", help="evaluate models: zoo eval MODEL[.tag] --data PATH", add_help=False)
    sub.add_parser("publish", help="ship a zoo fit export as a pretrained tag: zoo publish EXPORT --tag T [--data D] [--quant int8|int4]",
                   add_help=False)
    sub.add_parser("generate", help="sample text from a language model: zoo generate MODEL[.tag] --prompt TEXT",
                   add_help=False)
    sub.add_parser("serve", help="web page for a vision-language model on 127.0.0.1: zoo serve MODEL[.tag]",
                   add_help=False)
    sub.add_parser("caption", help="caption images, or answer a question about them (a captioner trained on easy-VQA): "
                                   "zoo caption IMAGE... --checkpoint EXPORT [--question TEXT] [--steps --block "
                                   "--threshold]", add_help=False)
    sub.add_parser("bench", help=f"measure on your device: zoo bench {{{','.join(BENCHMARKS)}}} [args]; "
                                 "zoo bench lists them", add_help=False)
    sub.add_parser("table", help="the zoo at a glance: benchmarks/results/zoo.csv, ZOO.md and docs/zoo_*.png from "
                                 "the registry and the results files: zoo table [--plan | --merge JSON...]", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    if verbose:
        argv = argv[1:]
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv and argv[0] == "fit":
            return _cmd_passthrough("zoo.recipes.cli", argv[1:])
        if argv and argv[0] == "eval":
            from zoo.kinds import captioner
            if captioner.handles(argv[1:]):  # captioners: BLEU / CIDEr on a caption set, or easy-VQA accuracy
                return captioner.eval_main(argv[1:])
            return _cmd_passthrough("zoo.evaluate", argv[1:])
        if argv and argv[0] == "publish":
            return _cmd_passthrough("zoo.publish", argv[1:])
        if argv and argv[0] == "generate":
            return _cmd_passthrough("zoo.generate", argv[1:])
        if argv and argv[0] == "serve":
            return _cmd_passthrough("zoo.serve", argv[1:])
        if argv and argv[0] == "caption":
            return _cmd_passthrough("zoo.kinds.captioner", argv[1:])
        if argv and argv[0] == "bench":
            return _cmd_bench(argv[1:])
        if argv and argv[0] == "table":
            return _cmd_passthrough("zoo.table", argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
