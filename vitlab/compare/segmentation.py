"""The emergent-segmentation study's report: unsupervised masks of the trained runs scored against Fashion-MNIST's
silhouettes (`vitlab.interpret.fashion_mnist_foreground`), beside the same architectures untrained and two
label-free references, with an example figure. Scores are cached per run in `segmentation.json`."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._figures import new_figure, save_figure, show_panel, smooth_map, styled, tint_masks, value_colorbar
from .runner import Study, confidence_interval

__all__ = ["segmentation_report", "segmentation_figures", "run_scores"]

_SELECT_IMAGES = 2000  # training images the best head is chosen on (never the test split)
_METHOD_NAMES = {"attention": "class-token attention, heads averaged", "best_head": "class-token attention, one head "
                 "(chosen on 2 k training images)", "rollout": "attention rollout", "maskcut": "MaskCut (last-block keys)"}


def _scores(model, split: str, limit: int = 0) -> dict[str, Any]:
    from ..interpret.segment import evaluate_fashion_mnist

    return evaluate_fashion_mnist(model, split, limit=limit)


def scored_images(config) -> dict[str, int]:
    """How many images a study's runs are scored on: the first `eval_subset` test images (0: all 10 k) and at most
    `_SELECT_IMAGES` training images (fewer with `train_subset`) to choose the best head on, so that overrides that
    shorten the runs (`vitlab compare emergent_segmentation eval_subset=500`) shorten the scoring too."""
    select = min(_SELECT_IMAGES, config.train_subset) if config.train_subset else _SELECT_IMAGES
    return {"test_images": config.eval_subset, "select_images": select}


def run_scores(model, cache: Path, images: dict[str, int]) -> dict[str, Any]:
    """Test-split scores of every method plus the best head chosen on training images, on `scored_images`;
    cached in `cache` (recomputed when the image counts differ; caches without counts used the full defaults)."""
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("scored_images", {"test_images": 0, "select_images": _SELECT_IMAGES}) == images:
            return cached
    test = _scores(model, "test", limit=images["test_images"])
    select = _scores(model, "train", limit=images["select_images"])["attention_head"]
    best = max(range(len(select)), key=lambda h: select[h]["miou"])
    result = {**test, "best_head": {**test["attention_head"][best], "head": best}, "scored_images": images}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def _untrained(config, seed: int):
    from ..interpret import with_run_preprocessing
    from ..models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(config.model, num_classes=10, in_chans=1, img_size=28, **config.model_kwargs)
    return with_run_preprocessing(model, config)


def _cell(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) < 2:
        return f"{values[0]:.1f}" if values else "–"
    low, high = confidence_interval(values)
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f} [{low:.1f}, {high:.1f}]"


def _baselines(test_images: int) -> list[str]:
    """Label-free references on the first `test_images` test images (0: all): every pixel foreground, and the mean
    training silhouette thresholded at ½."""
    from ..data import load_dataset
    from ..interpret.segment import SegmentationScores, fashion_mnist_foreground

    test = load_dataset("fashion_mnist", "test").images[:test_images or None]
    test = fashion_mnist_foreground(test)  # (N, 28, 28)
    train = fashion_mnist_foreground(load_dataset("fashion_mnist", "train").images)
    prior = train.float().mean(dim=0) > 0.5  # (28, 28)
    rows = []
    for name, mask in (("every pixel foreground", torch.ones_like(test)),
                       ("mean training silhouette > ½ (uses the training masks)", prior.expand_as(test))):
        s = SegmentationScores().update(mask, test).as_dict()
        rows.append(f"| {name} | {100 * s['miou']:.1f} | {100 * s['iou_foreground']:.1f} | {100 * s['jaccard']:.1f} |")
    return rows


def segmentation_report(study: Study, records: list[dict[str, Any]], root: Path, figures: Path) -> str:
    from ..interpret import load_model

    cols = list(dict.fromkeys(c.col for c in study.cells))
    configs = {c.col: c.config for c in study.cells}
    counts = [scored_images(config) for config in configs.values()]
    if any(c != counts[0] for c in counts):
        raise ValueError(f"{study.name}: the cells are scored on different numbers of images {counts} (eval_subset "
                         "or train_subset differs between them); give every cell the same ones")
    images = counts[0]
    trained: dict[tuple[str, int], dict] = {}
    for r in records:
        run = Path(r["run_dir"])
        trained[r["col"], r["seed"]] = run_scores(load_model(run)[0], run / "segmentation.json", images)
    untrained = {(col, seed): run_scores(_untrained(configs[col], seed),
                                         root / study.name / "untrained" / f"{col}_seed{seed}.json", images)
                 for col in cols for seed in study.seeds}
    count = images["test_images"] or "all 10 k"
    lines = ["#### Unsupervised foreground masks vs Fashion-MNIST silhouettes", "",
             f"Test-split mIoU (%, mean of background and foreground IoU over {count} test "
             "images), mean ± std "
             f"[95% CI] over seeds {study.seeds}; masks keep 60% of the attention mass (DINO), MaskCut τ = 0.15:", "",
             "| method | " + " | ".join(cols) + " | " + " | ".join(f"{c} untrained" for c in cols) + " |",
             "|---|" + "---:|" * (2 * len(cols))]
    for method, label in _METHOD_NAMES.items():
        cells = [_cell([scores[col, s][method]["miou"] for s in study.seeds]) for scores in (trained, untrained)
                 for col in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences of mIoU (same seed), points, mean [95% CI]; **bold** where the interval excludes "
              "zero:", "", "| | " + " | ".join(_METHOD_NAMES) + " |", "|---|" + "---:|" * len(_METHOD_NAMES)]
    pairs = [*study.comparisons, *[(c, f"{c} untrained") for c in cols]]
    for col, against in pairs:
        other = untrained if against.endswith(" untrained") else trained
        base = against.removesuffix(" untrained")
        cells = []
        for method in _METHOD_NAMES:
            diffs = [100 * (trained[col, s][method]["miou"] - other[base, s][method]["miou"]) for s in study.seeds]
            low, high = confidence_interval(diffs)
            text = f"{statistics.fmean(diffs):+.1f} [{low:+.1f}, {high:+.1f}]"
            cells.append(f"**{text}**" if low > 0 or high < 0 else text)
        lines.append(f"| {col} − {against} | " + " | ".join(cells) + " |")
    heads = {col: [trained[col, s]["best_head"]["head"] for s in study.seeds] for col in cols}
    lines += ["", "Heads chosen on the training images (per seed): " +
              "; ".join(f"{col} {heads[col]}" for col in cols) + ".", "",
              "Label-free references on the same test images:", "", "| reference | mIoU | foreground IoU | "
              "per-image Jaccard |", "|---|---:|---:|---:|", *_baselines(images["test_images"])]
    figure = _example_figure({col: load_model(Path(next(r["run_dir"] for r in records if r["col"] == col
                                                        and r["seed"] == study.seeds[0])))[0] for col in cols},
                             figures / f"{study.name}_examples.png")
    lines += ["", f"Examples (test images 0-5, seed {study.seeds[0]} of each model): input, silhouette mask, then "
              "per model the class-token attention (heads averaged), its 60%-mass mask and MaskCut's mask:", "",
              f"![examples](figures/{figure.name})"]
    return "\n".join(lines)


def segmentation_figures(study: Study, records: list[dict[str, Any]], root: Path) -> dict[str, str]:
    """The report's figures as it prints them, for `Note`s to cite: `"mIoU <method>: <col>"` (mean, trained or
    `"<col> untrained"`) and `"mIoU <method>: <col> − <against>"` (paired, mean [95% CI]). Read from the score
    caches the report writes; {} before the report has run."""
    cols = list(dict.fromkeys(c.col for c in study.cells))
    scores: dict[tuple[str, int], dict] = {}
    for r in records:
        scores[r["col"], r["seed"]] = Path(r["run_dir"]) / "segmentation.json"
    for col in cols:
        for seed in study.seeds:
            scores[f"{col} untrained", seed] = root / study.name / "untrained" / f"{col}_seed{seed}.json"
    if not all(path.is_file() for path in scores.values()):
        return {}
    scores = {key: json.loads(path.read_text()) for key, path in scores.items()}
    out = {}
    names = [*cols, *[f"{c} untrained" for c in cols]]
    pairs = [*study.comparisons, *[(c, f"{c} untrained") for c in cols]]
    for method in _METHOD_NAMES:
        for name in names:
            mean = statistics.fmean(100 * scores[name, s][method]["miou"] for s in study.seeds)
            out[f"mIoU {method}: {name}"] = f"{mean:.1f}"
        for col, against in pairs:
            diffs = [100 * (scores[col, s][method]["miou"] - scores[against, s][method]["miou"]) for s in study.seeds]
            low, high = confidence_interval(diffs)
            out[f"mIoU {method}: {col} − {against}"] = f"{statistics.fmean(diffs):+.1f} [{low:+.1f}, {high:+.1f}]"
    return out


@styled
@torch.no_grad()
def _example_figure(models: dict, path: Path, count: int = 6) -> Path:
    from ..data import load_dataset, normalize_images, resolve_data_config
    from ..interpret.attention import cls_attention, grid_shape, record_attention
    from ..interpret.segment import fashion_mnist_foreground, unsupervised_masks

    data = load_dataset("fashion_mnist", "test")
    pixels = data.images[:count]  # (B, 1, 28, 28) uint8
    display = pixels.permute(0, 2, 3, 1)  # (B, 28, 28, 1)
    truth = fashion_mnist_foreground(pixels)
    colours = np.array([[1.0, 0.2, 0.2]])
    columns = 2 + 3 * len(models)
    fig = new_figure((0.85 * columns + 0.5, 0.95 * count + 0.5))
    axes = fig.subplots(count, columns, squeeze=False)
    base = (display.float() / 255).repeat(1, 1, 1, 3).numpy()
    for b in range(count):
        show_panel(axes[b, 0], display[b], "input" if b == 0 else "")
        show_panel(axes[b, 1], display[b], "silhouette" if b == 0 else "",
                   rgb=tint_masks(base[b], [truth[b].numpy()], colours))
    for m, (name, model) in enumerate(models.items()):
        config = resolve_data_config(model)
        x = normalize_images(pixels, config.mean, config.std)  # (B, 1, 28, 28)
        maps = cls_attention(record_attention(model, x), grid_shape(model), model.num_prefix_tokens)  # (B, L, H, h, w)
        attention_mask = unsupervised_masks(model, x, "attention")  # (B, 28, 28)
        cut = unsupervised_masks(model, x, "maskcut")
        for b in range(count):
            col = 2 + 3 * m
            show_panel(axes[b, col], display[b], f"{name}\nattention" if b == 0 else "",
                       heat=smooth_map(maps[b, -1].mean(dim=0), 28))
            show_panel(axes[b, col + 1], display[b], f"{name}\nmask" if b == 0 else "",
                       rgb=tint_masks(base[b], [attention_mask[b].numpy()], colours))
            show_panel(axes[b, col + 2], display[b], f"{name}\nMaskCut" if b == 0 else "",
                       rgb=tint_masks(base[b], [cut[b].numpy()], colours))
    value_colorbar(fig, axes, "inferno", 0, 1, "attention (÷ panel max)")
    return save_figure(fig, path, palette=True)
