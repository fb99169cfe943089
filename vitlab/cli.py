"""The `vitlab` command line (thin: parse, call library functions)."""
from __future__ import annotations

import argparse
import os
import sys

from . import _cli_commands as commands
from ._cli_errors import describe_error

# Only the standard library at import time: `vitlab --help` / `--version` must not pay for torch. Each command
# (vitlab/_cli_commands.py) imports what it needs.


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vitlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: "
                                                             "VITLAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list registered models (shell-style PATTERN, e.g. 'crate_alpha_*')")
    p.add_argument("pattern", nargs="?")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights (timm's "
                                                              "list_models(pretrained=True))")
    p.set_defaults(func=commands.run_models)
    p = sub.add_parser("train", help="train a preset: vitlab train PRESET [key=value ...]")
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=commands.run_train)
    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint: vitlab eval CHECKPOINT [key=value ...]")
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=commands.run_eval)
    p = sub.add_parser("generate", help="sample text from a language-model run: vitlab generate RUN --prompt ...")
    p.add_argument("checkpoint", help="a language-model run directory (or its best/, last/, weights file)")
    p.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=commands.run_generate)
    p = sub.add_parser("compare", help="run comparison studies (grid × seeds) and write tables and curves: "
                                       "vitlab compare all --results docs/results.md")
    p.add_argument("studies", nargs="*", metavar="STUDY|key=value",
                   help="study names, or 'all' (none: list them with their descriptions); key=value items override "
                        "every run's TrainConfig (e.g. epochs=1 device=cuda: another config hash, so other results)")
    p.add_argument("--list", action="store_true", help="list the studies with their full descriptions")
    p.add_argument("--seeds", default=None, metavar="0,1,2", help="comma-separated seeds instead of each study's")
    p.add_argument("--root", default="runs/compare", help="where the runs live (finished runs are reused)")
    p.add_argument("--figures", default=None, help="folder for the figures (default: figures/ beside --results, "
                                                   "else ROOT/figures)")
    p.add_argument("--figure-format", default="png", metavar="png[,pdf,svg]",
                   help="learning-curve formats (the page links the first): png at 300 dpi, pdf / svg vector")
    p.add_argument("--results", default=None, help="also write the whole results page (Markdown) here")
    p.add_argument("--reuse-stale", action="store_true", help="reuse finished runs produced by other code (marked "
                                                               "stale on the page with their commit) instead of "
                                                               "retraining them")
    p.set_defaults(func=commands.run_compare)
    p = sub.add_parser("shards", help="write WebDataset shards (tar: key.jpg|png + key.cls + key.json, index.json) "
                                      "from any dataset vitlab reads: vitlab shards SRC OUT --split train,val; "
                                      "segmentation (ade20k): key.jpg + key.seg.png")
    p.add_argument("source", help="a dataset name (imagenet, cifar10, fashion_mnist, imagefolder with --data-dir, "
                                  "shards, ...)")
    p.add_argument("out", help="output folder; each split goes to OUT/<split>/")
    p.add_argument("--split", default="train", help="comma-separated splits (default: train)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true", help="download the source dataset first when it has URLs")
    p.add_argument("--image-size", type=int, default=None, help="in-memory datasets: resize first (default: as is)")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    p.add_argument("--max-mb", type=float, default=0, help="also close a shard at this many MiB of images (0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the dataset's order")
    p.add_argument("--overwrite", action="store_true", help="replace shards already written in OUT/<split>")
    p.set_defaults(func=commands.run_shards)
    p = sub.add_parser("check-data", help="decode every image of an ImageFolder / shard dataset as training would and "
                                          "list the unreadable ones: vitlab check-data imagenet --split train,val")
    p.add_argument("dataset", help="a dataset name (imagenet, imagefolder with --data-dir, shards, flowers102, ...)")
    p.add_argument("--split", default="train,val", help="comma-separated splits (default: train,val)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    p.set_defaults(func=commands.run_check_data)
    p = sub.add_parser("zeroshot", help="classify images with free-text class names through a CLIP: vitlab zeroshot "
                                        "RUN_OR_MODEL IMAGE... --classes 'a dress,a sneaker,a bag'")
    p.add_argument("model", help="a CLIP run directory (or a checkpoint in one), or a registered CLIP model name "
                                 "(e.g. crate_alpha_clipa_l14)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--classes", required=True, help="comma-separated class names")
    p.add_argument("--templates", default=None, help="prompt templates file, one per line with {} (default: the "
                                                     "run's zero-shot templates, else vitlab's photo templates)")
    p.add_argument("--checkpoint", default=None, help="weights for a model name (e.g. crate_alpha_CLIPA_L14.pth; "
                                                      "default: its published weights, downloaded once)")
    p.add_argument("--tokenizer-path", default=None, help="the vocabulary file or folder of a model name's tokenizer")
    p.add_argument("--top", type=int, default=3, help="classes shown per image")
    p.set_defaults(func=commands.run_zeroshot)
    p = sub.add_parser("presets", help="list the training presets")
    p.set_defaults(func=commands.run_presets)
    p = sub.add_parser("profile", help="parameters, FLOPs and measured throughput of a model")
    p.add_argument("model")
    p.add_argument("--init", choices=["mimetic"], default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.set_defaults(func=commands.run_profile)
    p = sub.add_parser("plot-weights", help="heatmaps of W_q W_k^T per head and W_v W_proj per layer (mimetic paper, "
                                            "Figure 1): vitlab plot-weights RUN_DIR | FILE --model NAME | init:MODEL")
    p.add_argument("checkpoint", help="a run directory (or its best/, last/, weights file), a weight file with "
                                      "--model, or init:MODEL for default vs mimetic init")
    p.add_argument("--model", default=None, help="architecture of a plain weight file (vitlab model name)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="key=value",
                   help="constructor arguments as Python literals, e.g. img_size=32 num_classes=10")
    p.add_argument("--out", default=None, help="PNG path (default ./weights_<name>.png)")
    p.add_argument("--layers", default=None, help="comma-separated layer indices, e.g. 0,5,11, for the figure and the "
                                                  "statistics table (default: the table lists all; the figure draws "
                                                  "all up to 12, init: first, middle and last)")
    p.add_argument("--max-dim", type=int, default=64, help="show the top-left N×N block of each d×d product")
    p.add_argument("--seed", type=int, default=0, help="seed of the init: comparison")
    p.add_argument("--title", default=None, help="figure title (default: architecture and checkpoint)")
    p.set_defaults(func=commands.run_plot_weights)
    _add_map_commands(sub)
    return parser


def _add_checkpoint_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("checkpoint", nargs="?" if optional else None, help="a run directory (or its best/, last/, weights file), or a weight file with "
                                      "--model (vitlab, timm, Hugging Face ViT, official CRATE / CRATE-α)")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...) or dataset items DATASET[:SPLIT]:INDEX, "
                                             "e.g. fashion_mnist:test:0")
    p.add_argument("--model", default=None, help="architecture of a plain weight file (vitlab model name)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="key=value",
                   help="constructor arguments as Python literals, e.g. img_size=32 num_classes=10")
    p.add_argument("--out", default="maps", help="output folder for the PNGs (default ./maps)")
    p.add_argument("--data-dir", default=None, help="where dataset items are looked up")


def _add_map_commands(sub) -> None:
    p = sub.add_parser("attention", help="PNG overlays of class-token attention per layer and head, attention "
                                         "rollout and the PCA of patch features: vitlab attention CHECKPOINT IMAGE...")
    _add_checkpoint_args(p)
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    p.add_argument("--heads", default=None, help="comma-separated head indices (default: all)")
    p.add_argument("--pca-layer", type=int, default=-1, help="block whose output tokens the PCA shows")
    p.set_defaults(func=commands.run_attention)
    p = sub.add_parser("segment", help="unsupervised foreground masks (attention thresholding, MaskCut) as PNGs, "
                                       "and their mIoU: vitlab segment CHECKPOINT [IMAGE...] [--evaluate fashion_mnist]; "
                                       "or a trained head's classes: vitlab segment --head RUN IMAGE...")
    _add_checkpoint_args(p, optional=True)
    p.add_argument("--head", default=None, metavar="RUN", help="a semantic-segmentation run directory: colour "
                   "overlays of its predicted classes with a legend (and the ground truth for dataset items such as "
                   "fashion_mnist_scenes:test:0)")
    p.add_argument("--mass", type=float, default=0.6, help="attention mass a mask keeps (DINO: 0.6)")
    p.add_argument("--tau", type=float, default=0.15, help="MaskCut affinity threshold on cosine similarity")
    p.add_argument("--num-masks", type=int, default=1, help="MaskCut masks per image")
    p.add_argument("--save-masks", action="store_true", help="also write the masks as 8-bit PNGs at each input "
                   "image's own resolution, one file per mask: NAME_mask_attention, _mask_rollout, _mask_maskcutK "
                   "(with --head: NAME_classes, the predicted class index per pixel)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"),
                   help="figure format: png (300 dpi) or vector pdf / svg (masks stay PNG)")
    p.add_argument("--masks", default=None, help="folder of ground-truth masks named like the images (<stem>.png, "
                                                  "nonzero = foreground): print mIoU on the given images")
    p.add_argument("--evaluate", default=None, metavar="fashion_mnist[:SPLIT]",
                   help="score every method on a whole split against the silhouette masks (docs/interpret.md)")
    p.add_argument("--limit", type=int, default=0, help="with --evaluate: only the first N images")
    p.set_defaults(func=commands.run_segment)


_IMAGES_AFTER_OPTIONS = ("attention", "segment", "zeroshot")  # commands whose IMAGE... may follow the options


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parses like argparse, except that image paths may also come after options (`vitlab attention W --model NAME
    photo.jpg`): argparse fills a `nargs='*'` positional before the options and leaves later paths unrecognised."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = getattr(args, "command", None)
    if extras and command in (*_IMAGES_AFTER_OPTIONS, "compare"):
        options = [e for e in extras if e.startswith("-")]
        if not options and command == "compare":  # `vitlab compare STUDY --seeds 0,1 epochs=1`
            args.studies = [*args.studies, *extras]
            extras = []
        elif not options:
            args.images = [*args.images, *extras]
            extras = []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _debug(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("VITLAB_DEBUG", "").strip() not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Runs one command. A user-facing error prints one `vitlab: error: ...` message on stderr (no traceback) and
    returns nonzero; `--debug` or VITLAB_DEBUG=1 lets the exception propagate with its traceback."""
    args = _parse(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return code
    except BrokenPipeError:  # `vitlab models | head`: the reader left; exit quietly (Python docs, signal / SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        if _debug(args):
            raise
        print("vitlab: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted into user errors (one line) and bugs (traceback) below
        if _debug(args):
            raise
        described = describe_error(err, args)
        if described is None:
            raise  # a bug, not a user error: the traceback is what a report needs
        message, code = described
        print(f"vitlab: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
