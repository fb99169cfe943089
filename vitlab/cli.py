"""The `vitlab` command line (thin: parse, call library functions)."""
from __future__ import annotations

import argparse
import sys

from .models import create_model, get_pretrained_cfg, list_models


def _models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern or "")
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    from .models._registry import short_alias

    for name in names:
        cfg = get_pretrained_cfg(name)
        alias = short_alias(name) or ""
        weights = "  weights: " + cfg["url"] if cfg.get("url") else ""
        print(f"{name:34s} {alias:18s} input {cfg['input_size'][1]}px{weights}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from ._profile import profile

    overrides = {"img_size": args.img_size} if args.img_size else {}
    model = create_model(args.model, **overrides)
    if args.init == "mimetic":
        from .init import mimetic_init_

        print(f"mimetic init: {mimetic_init_(model, seed=0)} attention layers initialised")
    print(profile(model, batch_size=args.batch_size, device=args.device, train=not args.no_train,
                  iters=args.iters))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list registered models (shell-style PATTERN, e.g. 'crate_alpha_*')")
    p.add_argument("pattern", nargs="?")
    p.set_defaults(func=_models)
    p = sub.add_parser("profile", help="parameters, FLOPs and measured throughput of a model")
    p.add_argument("model")
    p.add_argument("--init", choices=["mimetic"], default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.set_defaults(func=_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"vitlab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
