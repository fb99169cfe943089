"""What each `vitlab` command does (vitlab/cli.py parses the command line and calls one of these `run_*`).

Only the standard library at import time: `vitlab --help` / `--version` must not pay for torch. Each command imports
what it needs."""
from __future__ import annotations

import argparse
import os
import sys

from ._cli_errors import check_device as _check_device

__all__ = ["run_models", "run_profile", "run_plot_weights", "run_attention", "run_segment", "run_train", "run_eval",
           "run_zeroshot", "run_generate", "run_presets", "run_shards", "run_check_data", "run_compare"]


def run_models(args: argparse.Namespace) -> int:
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


def run_profile(args: argparse.Namespace) -> int:
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


def run_plot_weights(args: argparse.Namespace) -> int:
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


def run_attention(args: argparse.Namespace) -> int:
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


def run_segment(args: argparse.Namespace) -> int:
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


def run_train(args: argparse.Namespace) -> int:
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


def run_eval(args: argparse.Namespace) -> int:
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


def run_zeroshot(args: argparse.Namespace) -> int:
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


def run_generate(args: argparse.Namespace) -> int:
    from .train.generate import generate_text

    _check_device(args.device)
    texts = generate_text(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k or None, seed=args.seed,
                          num_samples=args.num_samples, device=args.device)
    print("\n---------------\n".join(texts))
    return 0


def run_presets(args: argparse.Namespace) -> int:
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


def run_shards(args: argparse.Namespace) -> int:
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


def run_check_data(args: argparse.Namespace) -> int:
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


def run_compare(args: argparse.Namespace) -> int:
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
