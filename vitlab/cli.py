"""The `vitlab` command line (thin: parse, call library functions)."""
from __future__ import annotations

import argparse
import os
import sys

from ._cli_errors import check_device as _check_device, describe_error

# Only the standard library at import time: `vitlab --help` / `--version` must not pay for torch. Each command
# imports what it needs.


def _models(args: argparse.Namespace) -> int:
    from .models import get_pretrained_cfg, list_models

    names = list_models(args.pattern or "", pretrained=args.pretrained)
    if not names:
        print(f"no {'model with published weights' if args.pretrained else 'model'} matches {args.pattern!r}",
              file=sys.stderr)
        return 1
    from .models import short_alias

    for name in names:
        cfg = get_pretrained_cfg(name)
        alias = short_alias(name) or ""
        weights = "  weights: " + cfg["url"] if cfg.get("url") else ""
        if cfg.get("task") == "lm":
            shape = f"context {cfg['block_size']}, vocab {cfg['vocab_size']}"
        elif cfg.get("task") == "clip":
            shape = (f"CLIP, input {cfg['input_size'][1]}px, {cfg['context_length']} text tokens"
                     if "input_size" in cfg else "CLIP of any image tower (image_model=...)")
        else:
            shape = f"input {cfg['input_size'][1]}px"
        print(f"{name:36s} {alias:22s} {shape}{weights}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from ._profile import profile
    from .models import create_model

    _check_device(args.device)
    overrides = {"img_size": args.img_size} if args.img_size else {}
    model = create_model(args.model, **overrides)
    if args.init == "mimetic":
        from .init import mimetic_init_

        print(f"mimetic init: {mimetic_init_(model, seed=0)} attention layers initialised")
    print(profile(model, batch_size=args.batch_size, device=args.device, train=not args.no_train,
                  iters=args.iters))
    return 0


def _plot_weights(args: argparse.Namespace) -> int:
    from .interpret import format_stats, parse_model_kwargs, plot_checkpoint

    layers = [int(i) for i in args.layers.split(",") if i.strip()] if args.layers else None
    path, products = plot_checkpoint(args.checkpoint, args.out, model=args.model, layers=layers,
                                     model_kwargs=parse_model_kwargs(args.model_kwargs), max_dim=args.max_dim,
                                     seed=args.seed, title=args.title)
    print(path)
    for label, layer_products in products.items():
        print(f"{label}:\n{format_stats(layer_products, layers=layers)}")  # the figure's rows
    return 0


def _load_for_maps(args: argparse.Namespace):
    from .interpret import load_model, parse_model_kwargs

    model, label = load_model(args.checkpoint, args.model, parse_model_kwargs(args.model_kwargs))
    return model.eval(), label


def _layers(text: str | None) -> list[int] | None:
    return [int(i) for i in text.split(",") if i.strip()] if text else None


def _attention(args: argparse.Namespace) -> int:
    from .interpret.render import load_inputs, plot_attention

    model, _ = _load_for_maps(args)
    inputs = load_inputs(args.images, model.pretrained_cfg, data_dir=args.data_dir)
    for path in plot_attention(model, inputs, args.out, layers=_layers(args.layers), heads=_layers(args.heads),
                               pca_layer=args.pca_layer):
        print(path)
    return 0


def _segment_with_head(args: argparse.Namespace) -> int:
    from .interpret.dense import load_segmentation_inputs, load_segmentation_run, plot_predictions

    specs = [s for s in (args.checkpoint, *args.images) if s]  # with --head RUN every positional is an image
    run = load_segmentation_run(args.head)
    inputs = load_segmentation_inputs(specs, run.meta, data_dir=args.data_dir)
    for path in plot_predictions(run, inputs, args.out, save_masks=args.save_masks, fmt=args.format):
        print(path)
    return 0


def _segment(args: argparse.Namespace) -> int:
    from .interpret.render import evaluate_mask_files, load_inputs, plot_segmentation
    from .interpret.segment import evaluate_fashion_mnist

    if args.head:
        return _segment_with_head(args)
    if not args.checkpoint:
        raise ValueError("give a CHECKPOINT (unsupervised masks) or --head RUN (a trained segmentation head)")
    model, label = _load_for_maps(args)
    if not args.images and not args.evaluate:
        raise ValueError("nothing to do: give images (files or DATASET[:SPLIT]:INDEX items) and/or --evaluate")
    if args.images:
        inputs = load_inputs(args.images, model.pretrained_cfg, data_dir=args.data_dir)
        for path in plot_segmentation(model, inputs, args.out, mass=args.mass, tau=args.tau,
                                      num_masks=args.num_masks, save_masks=args.save_masks, fmt=args.format):
            print(path)
        if args.masks:
            _print_scores(f"{label} on {len(inputs.names)} images vs {args.masks}",
                          evaluate_mask_files(model, inputs, args.masks, mass=args.mass, tau=args.tau))
    if args.evaluate:
        dataset, _, split = args.evaluate.partition(":")
        if dataset != "fashion_mnist":
            raise ValueError(f"--evaluate knows fashion_mnist[:SPLIT] (its masks follow from its pixels), got "
                             f"{dataset!r}; for other data pass images with --masks DIR")
        scores = evaluate_fashion_mnist(model, split or "test", limit=args.limit, data_dir=args.data_dir,
                                        mass=args.mass, tau=args.tau)
        _print_scores(f"{label} on fashion_mnist {split or 'test'}", scores)
    return 0


def _print_scores(title: str, scores: dict) -> None:
    print(f"{title}: mIoU (background, foreground IoU), per-image foreground Jaccard")
    for method, s in scores.items():
        for i, one in enumerate(s if isinstance(s, list) else [s]):
            name = f"{method} {i}" if isinstance(s, list) else method
            print(f"  {name:18s} {100 * one['miou']:6.2f}  ({100 * one['iou_background']:.2f}, "
                  f"{100 * one['iou_foreground']:.2f})  {100 * one['jaccard']:6.2f}   [{one['images']} images]")


def _train(args: argparse.Namespace) -> int:
    from .train import apply_overrides, get_preset, train

    config = apply_overrides(get_preset(args.preset), args.overrides)
    _check_device(config.device)
    result = train(config, preset=args.preset, argv=sys.argv)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if "top1" in result:
        print(f"test accuracy: {result['top1']:.2f}% top-1, {result['top5']:.2f}% top-5 "
              f"({config.dataset} {config.eval_split}, step {result['step']}; best {result['best_top1']:.2f}%); "
              f"run: {result['out_dir']}")
    elif "miou" in result:
        print(f"test mIoU: {result['miou']:.2f}% (mean accuracy {result['macc']:.2f}%, pixel accuracy "
              f"{result['aacc']:.2f}%; {config.dataset} {config.eval_split}, step {result['step']}; best "
              f"{result['best_miou']:.2f}%); run: {result['out_dir']}")
    elif "zeroshot_top1" in result:
        print(f"zero-shot accuracy: {result['zeroshot_top1']:.2f}% top-1, {result['zeroshot_top5']:.2f}% top-5 "
              f"({config.dataset}, step {result['step']}; best {result['best_zeroshot_top1']:.2f}%); "
              f"run: {result['out_dir']}")
    elif "recall_mean" in result:
        print(f"{config.eval_split} contrastive loss {result['eval_loss']:.4f}, retrieval recall@1 image→text "
              f"{result['image_to_text_r1']:.2f}%, text→image {result['text_to_image_r1']:.2f}% ({config.dataset}, "
              f"step {result['step']}); run: {result['out_dir']}")
    elif "perplexity" in result:
        print(f"{config.eval_split} loss {result['eval_loss']:.4f} (perplexity {result['perplexity']:.2f}; "
              f"{config.dataset}, step {result['step']}; best {result['best_eval_loss']:.4f}); "
              f"run: {result['out_dir']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.overrides)
    if "perplexity" in result:
        print(f"{result['checkpoint']}: {result['eval_split']} ({result['tokens']} tokens): loss "
              f"{result['eval_loss']:.4f}, perplexity {result['perplexity']:.2f}, "
              f"{result['bits_per_token']:.4f} bits/token")
    elif "miou" in result:
        print(f"{result['checkpoint']}: {result['eval_split']} ({result['images']} images): mIoU {result['miou']:.2f}%, "
              f"mean accuracy {result['macc']:.2f}%, pixel accuracy {result['aacc']:.2f}%, loss "
              f"{result['eval_loss']:.4f}")
        for name, iou in result["iou_per_class"].items():
            print(f"  IoU {name:24s} " + ("   –  (absent)" if iou is None or iou != iou else f"{iou:6.2f}%"))
    elif "zeroshot_top1" in result or "recall_mean" in result:
        print(f"{result['checkpoint']}:")
        if "eval_loss" in result:
            print(f"  {result['eval_split']} ({result['images']} image–text pairs): contrastive loss "
                  f"{result['eval_loss']:.4f}")
        if "recall_mean" in result:
            for k in (1, 5, 10):
                print(f"  retrieval recall@{k}: image→text {result[f'image_to_text_r{k}']:.2f}%, text→image "
                      f"{result[f'text_to_image_r{k}']:.2f}%")
        if "zeroshot_top1" in result:
            print(f"  zero-shot classification: top-1 {result['zeroshot_top1']:.2f}%, top-5 "
                  f"{result['zeroshot_top5']:.2f}%")
    else:
        print(f"{result['checkpoint']}: {result['eval_split']} ({result['images']} images): top-1 "
              f"{result['top1']:.2f}%, top-5 {result['top5']:.2f}%, loss {result['eval_loss']:.4f}")
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    from .data.templates import read_templates
    from .interpret.zeroshot import load_clip, zero_shot_predict

    names = [c.strip() for c in args.classes.split(",") if c.strip()]
    bundle = load_clip(args.model, checkpoint=args.checkpoint, tokenizer_path=args.tokenizer_path)
    templates = read_templates(args.templates) if args.templates else None
    probs = zero_shot_predict(bundle, args.images, names, templates)  # (N, K)
    print(f"{bundle.label}: {len(names)} classes × {len(templates or bundle.templates)} templates")
    for path, row in zip(args.images, probs):
        order = row.argsort(descending=True)[:args.top]
        ranked = ", ".join(f"{names[i]} {100 * row[i]:.1f}%" for i in order.tolist())
        print(f"{path}: {ranked}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .train.generate import generate_text

    _check_device(args.device)
    texts = generate_text(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                          num_samples=args.num_samples, device=args.device)
    print("\n---------------\n".join(texts))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from .train.presets import describe, list_presets

    for name in list_presets():
        print(f"{name:36s} {describe(name)}")
    return 0


def _segmentation_shards(args: argparse.Namespace) -> int:
    from .data.segmentation import load_segmentation_dataset, write_segmentation_shards

    if args.source == "fashion_mnist_scenes":
        raise ValueError("fashion_mnist_scenes is built in memory from Fashion-MNIST in seconds: nothing to shard")
    for split in args.split.split(","):
        dataset = load_segmentation_dataset(args.source, split, data_dir=args.data_dir)
        out = write_segmentation_shards(dataset, os.path.join(args.out, split), shard_size=args.shard_size,
                                        prefix=split, seed=None if args.no_shuffle else args.seed,
                                        overwrite=args.overwrite)
        print(f"{out}: {len(dataset)} image + mask pairs, {dataset.num_classes} classes "
              f"(train with dataset=ade20k_shards data_dir={args.out})")
    return 0


def _shards(args: argparse.Namespace) -> int:
    from .data import load_dataset, write_shards
    from .data.segmentation import is_segmentation_dataset

    if is_segmentation_dataset(args.source):
        return _segmentation_shards(args)
    for split in args.split.split(","):
        dataset = load_dataset(args.source, split, data_dir=args.data_dir, download=args.download,
                               image_size=args.image_size, train_transform=False)
        out = write_shards(dataset, os.path.join(args.out, split), prefix=split, shard_size=args.shard_size,
                           max_bytes=int(args.max_mb * 2**20), seed=None if args.no_shuffle else args.seed,
                           progress=None, overwrite=args.overwrite, description=f"{args.source}:{split}")
        print(f"{out}: {len(dataset)} samples, {dataset.num_classes} classes "
              f"(train with dataset=shards data_dir={args.out} train_split={split})")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from .data import EncodedImageDataset, check_images, load_dataset

    bad = 0
    for split in args.split.split(","):
        dataset = load_dataset(args.dataset, split, data_dir=args.data_dir, image_size=args.image_size,
                               train_transform=False)
        if not isinstance(dataset, EncodedImageDataset):
            print(f"{args.dataset} {split}: {len(dataset)} images, read and checked in memory when loaded")
            continue
        failures = check_images(dataset, num_workers=args.workers)
        bad += len(failures)
        print(f"{args.dataset} {split}: {len(dataset)} images, {len(failures)} unreadable")
        for message in failures:
            print(f"  {message}")
    if bad:
        print(f"{bad} unreadable image(s): remove or replace them, or train with data_errors=skip (counted and "
              "logged)", file=sys.stderr)
    return 1 if bad else 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import STUDIES, compare

    names = [n for n in args.studies if "=" not in n]
    overrides = [n for n in args.studies if "=" in n]
    if args.list or not names:
        print(_study_listing(STUDIES))
        return 0
    names = sorted(STUDIES) if names == ["all"] else names
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    formats = tuple(f.strip().lstrip(".").lower() for f in args.figure_format.split(",") if f.strip())
    print(compare(names, root=args.root, figures=args.figures, results=args.results, reuse_stale=args.reuse_stale,
                  seeds=seeds, overrides=overrides, formats=formats))
    return 0


def _study_listing(studies: dict) -> str:
    """Each study's name, title and full description (its docstring), for `vitlab compare --list`."""
    import textwrap

    from .compare import get_study

    blocks = []
    for name in sorted(studies):
        study = get_study(name)
        doc = textwrap.dedent((studies[name].__doc__ or "").strip("\n")).strip()
        doc = " ".join(line.strip() for line in doc.splitlines())
        blocks.append(f"{name}\n  {study.title}\n" + textwrap.fill(doc, 110, initial_indent="  ",
                                                                  subsequent_indent="  ")
                      + (f"\n  budget: {study.budget}" if study.budget else ""))
    return "\n\n".join(blocks)


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
    p.set_defaults(func=_models)
    p = sub.add_parser("train", help="train a preset: vitlab train PRESET [key=value ...]")
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_train)
    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint: vitlab eval CHECKPOINT [key=value ...]")
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_eval)
    p = sub.add_parser("generate", help="sample text from a language-model run: vitlab generate RUN --prompt ...")
    p.add_argument("checkpoint", help="a language-model run directory (or its best/, last/, weights file)")
    p.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_generate)
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
    p.set_defaults(func=_compare)
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
    p.set_defaults(func=_shards)
    p = sub.add_parser("check-data", help="decode every image of an ImageFolder / shard dataset as training would and "
                                          "list the unreadable ones: vitlab check-data imagenet --split train,val")
    p.add_argument("dataset", help="a dataset name (imagenet, imagefolder with --data-dir, shards, flowers102, ...)")
    p.add_argument("--split", default="train,val", help="comma-separated splits (default: train,val)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    p.set_defaults(func=_check_data)
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
    p.set_defaults(func=_zeroshot)
    p = sub.add_parser("presets", help="list the training presets")
    p.set_defaults(func=_presets)
    p = sub.add_parser("profile", help="parameters, FLOPs and measured throughput of a model")
    p.add_argument("model")
    p.add_argument("--init", choices=["mimetic"], default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.set_defaults(func=_profile)
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
    p.set_defaults(func=_plot_weights)
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
    p.set_defaults(func=_attention)
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
    p.set_defaults(func=_segment)


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
