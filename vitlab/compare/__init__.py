"""Comparison studies: a grid of configurations × seeds through the training engine, tables with confidence
intervals, learning curves (issue 4)."""
import os
from pathlib import Path

from .plots import BAND_CAPTION, plot_curves
from .runner import (Cell, Note, Study, code_version, confidence_interval, config_hash, curve_axis, render_notes,
                     run_dir, run_study, slugify, study_figures, summarise)
from .studies import STUDIES, get_study

__all__ = ["Cell", "Study", "Note", "run_study", "summarise", "confidence_interval", "config_hash", "code_version",
           "study_figures", "render_notes", "plot_curves", "STUDIES", "get_study", "compare", "slugify", "run_dir",
           "figures_dir", "customise"]


def figures_dir(root: str, results: str | None = None, figures: str | None = None) -> Path:
    """Where `compare` writes figures: `figures` when given; else `figures/` beside the results page (the page links
    them as `figures/<name>`); else `<root>/figures`. Never the repository's docs/figures unless asked for."""
    if figures:
        return Path(figures)
    if results:
        return Path(results).parent / "figures"
    return Path(root) / "figures"


def customise(study: Study, seeds: list[int] | None = None, overrides: list[str] | None = None) -> Study:
    """The study with other seeds and/or `key=value` overrides applied to every cell's TrainConfig
    (`vitlab.train.apply_overrides`, checked against the field types). A changed config changes its config hash, so
    results of the unchanged study are never mixed in (they are retrained under the same directory)."""
    import dataclasses

    from ..train import apply_overrides

    if seeds is not None:
        if not seeds:
            raise ValueError("--seeds needs at least one seed")
        study = dataclasses.replace(study, seeds=list(seeds))
    if overrides:
        study = dataclasses.replace(study, cells=[dataclasses.replace(c, config=apply_overrides(c.config, overrides))
                                                  for c in study.cells])
    return study


def _figure_link(figure: Path, page: Path) -> str:
    return Path(os.path.relpath(figure.resolve(), page.resolve().parent)).as_posix()


def compare(names: list[str], root: str = "runs/compare", figures: str | None = None,
            results: str | None = None, reuse_stale: bool = False, seeds: list[int] | None = None,
            overrides: list[str] | None = None, formats: tuple[str, ...] = ("png",)) -> str:
    """Runs (or completes) the named studies; writes `<root>/<study>/results.md` and the learning curves
    `<figures>/<study>_curves.<format>` for each of `formats` (png, pdf, svg; the page links the first), and with
    `results` the whole results page (header with machine and command, every study, weight figures); returns the
    page's Markdown. `figures`: see `figures_dir` (default: `figures/` beside `results`, else `<root>/figures`).
    `seeds` / `overrides`: see `customise`. Finished runs are reused only when produced by the same config and code;
    `reuse_stale=True` keeps results of other code too, marked stale on the page with the commit they came from."""
    import platform
    import sys
    import time

    import torch

    start = time.perf_counter()
    figures_path = figures_dir(root, results, figures)
    page_path = Path(results) if results else None
    sections = []
    for name in names:
        study = customise(get_study(name), seeds, overrides)
        records = run_study(study, root, reuse_stale=reuse_stale)
        ylabel = {"eval_loss": "validation loss", "miou": "test mIoU (%)",
                  "accuracy": "test accuracy (%)"}.get(study.metric, "test top-1 (%)")
        axis = curve_axis(study)
        written = [plot_curves(records, figures_path / f"{study.name}_curves.{fmt}", study.title, ylabel=ylabel,
                               xlabel="optimiser step" if axis == "step" else "epoch") for fmt in formats]
        cited = study_figures(study, records)
        if study.figures is not None:
            cited.update(study.figures(study, records, Path(root)))
        study_page = Path(root) / study.name / "results.md"
        caption = _curves_caption(study, axis)
        body = "\n".join([f"### {study.title}", "", f"Budget: {study.budget}.", "", summarise(study, records), "",
                          *[f"{n}\n" for n in render_notes(study, cited)]])
        report = ("\n\n" + study.report(study, records, Path(root), figures_path)) if study.report else ""

        def section(page: Path) -> str:  # the figure linked relative to the page that shows it
            return f"{body}\n![learning curves]({_figure_link(written[0], page)})\n\n{caption}{report}"

        study_page.parent.mkdir(parents=True, exist_ok=True)
        study_page.write_text(section(study_page) + "\n")
        sections.append(section(page_path or study_page))
    if results:
        sections.append(_weight_section(names, Path(root), figures_path, page_path))
    page = "\n\n".join(sections)
    if results:
        code = code_version()
        reused = "when their config hash and code version match" + (", and runs of other code too, marked stale"
                                                                     if reuse_stale else "")
        header = (f"Generated by `vitlab compare {' '.join(names)} --results {results}` on {platform.machine()} with "
                  f"{torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}; "
                  f"this invocation took {(time.perf_counter() - start) / 60:.1f} min (finished runs in {root} are "
                  f"reused {reused}; delete it to retrain everything). Code: vitlab {code['vitlab']}, commit "
                  f"{code['git_commit'] or 'unknown'}, source hash {code['source_hash'][:12]}. Command line: "
                  f"`{' '.join(sys.argv)}`.")
        page = header + "\n\n" + _SCOPE + "\n\n" + page
        Path(results).parent.mkdir(parents=True, exist_ok=True)
        Path(results).write_text(page + "\n")
    return page


def _curves_caption(study: Study, axis: str) -> str:
    seeds = len(study.seeds)
    band = (f"the shaded band is the 95% confidence interval of that mean (Student t over the {seeds} seeds)"
            if seeds >= 2 else "one seed, so no band")
    x = "optimiser steps (the study is budgeted in steps)" if axis == "step" else "epochs"
    return (f"*Learning curves: one panel per row of the table, one line per column, the mean over seeds "
            f"{study.seeds}; {band}. x: {x}.*")


_SCOPE = """What this page can and cannot show. Everything here trains on real data (Fashion-MNIST; tiny-shakespeare for
the language models) on a 2-core CPU, with small models (width 96, depth 4, patch 4; language models of 0.8 M
parameters) and short schedules, so that the whole page regenerates in about two and a half hours.
It is not the papers' setting: the mimetic paper's claims are for ViT-Tiny/2 trained 100 epochs on CIFAR-10/100,
SVHN, Tiny ImageNet and ImageNet, CRATE-α's ablation is B/32 on ImageNet-1K, and its segmentation results are
MaskCut on COCO with L/8 models. CIFAR, ImageNet and COCO cannot be downloaded on these machines, and no GPU was lent
to this work, so the seed-scale recipe (`vitlab train cifar10_vit_tiny_mimetic`, or the same recipe on Fashion-MNIST
resized to 32 × 32 × 3) has not been run here. Where a comparison's 95% interval includes zero, this page does not
claim a difference either way."""


def _weight_section(names: list[str], root: Path, figures: Path, page: Path) -> str:
    """Figure-1-style weight products: the paper's ViT-Tiny/2 at initialization (default vs mimetic), and the
    mimetic study's 60 k-image ViTs (seed 0) after training."""
    from ..interpret import format_stats, plot_checkpoint, plot_init_comparison

    lines = ["### Weight structure (the mimetic paper's Figure 1)", "",
             "Top-left 64 × 64 blocks of W_q W_kᵀ per head and of W_v W_proj; colour limits per panel (±max, "
             "in each title), titles give the mean diagonal.", ""]
    init = plot_init_comparison("vit_tiny_patch2_32", figures / "weights_init_vit_tiny.png", seed=0)
    lines += ["ViT-Tiny/2 (the paper's CIFAR model) at initialization, default (left) vs mimetic (right); "
              f"`vitlab plot-weights init:vit_tiny_patch2_32 --out {figures / 'weights_init_vit_tiny.png'}`:", "",
              f"![init]({_figure_link(figures / 'weights_init_vit_tiny.png', page)})", "", "```",
              format_stats(init["mimetic"]), "```"]
    if "mimetic_fashion" in names:
        for col in ("default", "mimetic"):
            run = run_dir(root / "mimetic_fashion", Cell("60k images, 0.5 epoch", col, None), 0)
            if not run.is_dir():
                continue  # e.g. --seeds without 0
            out = figures / f"weights_trained_mimetic_fashion_{col}.png"
            _, products = plot_checkpoint(str(run), out, title=f"ViT on Fashion-MNIST, {col} init, after 0.5 epoch "
                                                                f"on 60 k images (seed 0)")
            lines += ["", f"After training, {col} init: `vitlab plot-weights {run} --out {out}`:", "",
                      f"![{col}]({_figure_link(out, page)})", "", "```", format_stats(next(iter(products.values()))),
                      "```"]
    return "\n".join(lines)
