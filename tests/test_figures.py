"""Figures fit for a paper (issue 14): real vector files, 300-dpi PNGs, nothing cut off, legends outside the data,
colour bars, step axes, masks at the input's resolution; and `vitlab compare`'s seeds, overrides, ETA, figure folder,
listing and run-directory names (with the migration of old names)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
import vitlab.compare.runner as runner
from vitlab._figures import legend_below, new_figure, save_figure, styled
from vitlab.cli import main
from vitlab.compare import Cell, Study, compare, customise, figures_dir, plot_curves, run_dir, run_study, slugify
from vitlab.compare.plots import curve_band
from vitlab.compare.studies import STUDIES
from vitlab.interpret import load_model
from vitlab.interpret.render import load_inputs, plot_attention, plot_segmentation, to_source_resolution
from vitlab.interpret.weights import plot_weight_products, weight_products
from vitlab.train import get_preset

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}
TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=3)


def _records(seeds=3, x_of=lambda i: i):
    return [{"row": row, "col": col, "seed": s, "curve": [(x_of(i), 50.0 + i + s + (col == "b")) for i in range(1, 4)]}
            for row in ("1k images, 3 epochs", "60k images") for col in ("a", "b") for s in range(seeds)]


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_curves_are_written_in_the_format_their_name_asks_for(tmp_path, fmt):
    path = plot_curves(_records(), tmp_path / f"c.{fmt}", "a title")
    data = path.read_bytes()
    assert data.startswith(MAGIC[fmt]) and not (fmt != "png" and data.startswith(MAGIC["png"]))
    if fmt == "svg":
        assert b"<svg" in data[:600]


def test_png_curves_are_300_dpi_and_keep_titles_and_legend_inside_the_file(tmp_path):
    long_title = "A long study title that would be cut off by a fixed canvas " * 3
    path = plot_curves(_records(), tmp_path / "c.png", long_title)
    with Image.open(path) as image:
        dpi = image.info.get("dpi", (0, 0))
        assert round(dpi[0]) == 300 and image.size[0] >= 1500
        pixels = np.asarray(image.convert("L"))
    # tight bounding box: something is drawn near every edge (title at the top, legend at the bottom), nothing cut
    assert pixels[:30].min() < 128 and pixels[-40:].min() < 128


def test_legend_is_below_the_axes_never_over_the_data():
    @styled
    def draw():
        fig = new_figure((4, 3))
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], label="x")
        legend = legend_below(fig)
        fig.canvas.draw()
        return legend.get_window_extent(), ax.get_window_extent()
    legend, axes = draw()
    assert legend.y1 <= axes.y0  # entirely under the axes


def test_curve_band_is_the_95_percent_t_interval_and_absent_for_one_seed():
    values = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])  # mean 2, s 1 at the first point
    low, high = curve_band(values)
    assert low[0] == pytest.approx(2 - 4.3027 / 3**0.5, abs=1e-4) and high[1] == pytest.approx(10.0)
    assert curve_band(values[:1]) is None


def test_unknown_figure_suffix_is_an_error(tmp_path):
    fig = new_figure((2, 2))
    with pytest.raises(ValueError, match=r"\.png, \.pdf, \.svg"):
        save_figure(fig, tmp_path / "x.jpg")


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_weight_figures_in_vector_form(tmp_path, fmt):
    products = weight_products(vitlab.create_model("vit_tiny_patch4_32", **{**TINY, "img_size": 32}))
    assert plot_weight_products(products, tmp_path / f"w.{fmt}").read_bytes().startswith(MAGIC[fmt])
    assert main(["plot-weights", "init:vit_tiny_patch4_32", "--out", str(tmp_path / f"i.{fmt}"), "--model-kwargs",
                 "embed_dim=24", "depth=2", "num_heads=2"]) == 0
    assert (tmp_path / f"i.{fmt}").read_bytes().startswith(MAGIC[fmt])


def test_attention_and_segment_figures_have_colour_bars_and_vector_forms(tmp_path):
    model = vitlab.create_model("vit_tiny_patch4_32", **TINY).eval()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    inputs = load_inputs([str(tmp_path / "p.png")], model.pretrained_cfg)
    for fmt in ("png", "pdf", "svg"):
        (path,) = plot_attention(model, inputs, tmp_path, fmt=fmt)
        assert path.suffix == f".{fmt}" and path.read_bytes().startswith(MAGIC[fmt])
        (path,) = plot_segmentation(model, inputs, tmp_path, fmt=fmt)
        assert path.read_bytes().startswith(MAGIC[fmt])
    svg = (tmp_path / "p_attention.svg").read_text()
    assert "attention (÷ panel max)" in svg  # the colour bar's label (text stays text in SVG)


def test_saved_masks_match_the_input_resolution_one_file_per_mask(tmp_path):
    model = vitlab.create_model("vit_tiny_patch4_32", **TINY).eval()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    inputs = load_inputs([str(tmp_path / "p.png")], model.pretrained_cfg)
    plot_segmentation(model, inputs, tmp_path, num_masks=3, save_masks=True)
    names = sorted(p.name for p in tmp_path.glob("p_mask_*.png"))
    assert names == ["p_mask_attention.png", "p_mask_maskcut0.png", "p_mask_maskcut1.png", "p_mask_maskcut2.png",
                     "p_mask_rollout.png"]
    for name in names:
        with Image.open(tmp_path / name) as mask:
            assert mask.size == (50, 30) and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_mask_back_to_source_pastes_the_crop_at_its_place():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, :2] = True  # left half of the centre crop
    out = to_source_resolution(mask, (12, 8, (2.0, 0.0, 10.0, 8.0)))  # 12 × 8 image, centre crop 8 × 8
    assert out.shape == (8, 12)
    assert not out[:, :2].any() and out[:, 2:6].all() and not out[:, 6:].any()


# ----------------------------------------------------------------------------------------------------------------
# vitlab compare


def test_slugify_and_run_dir_names():
    assert slugify("60k images, 3 epochs") == "60k-images-3-epochs"
    assert slugify("+residual (CRATE-α)") == "+residual-CRATE-α"
    cell = Cell("60k images, 0.5 epoch", "QK only", None)
    assert run_dir("runs/x", cell, 2) == Path("runs/x/60k-images-0.5-epoch__QK-only/seed2")
    for name in STUDIES:
        for c in STUDIES[name]().cells:
            assert not set(str(run_dir("r", c, 0))) & {" ", ","}


def _fake_train(calls, steps=False):
    def fake(config, preset=None):
        calls.append(config.seed)
        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lines = [{"step": 10 * e, "epoch": e, "top1": 50.0 + e + config.seed} for e in (1, 2)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        return {"top1": 50.0 + config.seed + config.lr, "eval_loss": 1.0, "train_loss": 0.5}
    return fake


def _study(**changes):
    base = get_preset("fashion_mnist_vit")
    import dataclasses
    base = dataclasses.replace(base, **changes)
    return Study("s", "a study", [Cell("60k images, 3 epochs", "a", base), Cell("60k images, 3 epochs", "b", base)],
                 seeds=[0, 1], comparisons=[("b", "a")], budget="none")


def test_old_run_directories_are_renamed_and_reused(tmp_path, monkeypatch):
    calls, lines = [], []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    study = _study()
    run_study(study, tmp_path, log=lines.append)
    assert len(calls) == 4
    new = tmp_path / "s" / "60k-images-3-epochs__a"
    old = tmp_path / "s" / "60k_images,_3_epochs__a"
    new.rename(old)  # as an earlier version named it
    lines.clear()
    records = run_study(study, tmp_path, log=lines.append)
    assert len(calls) == 4  # nothing retrained: the finished results were found under the old name
    assert not old.exists() and (new / "seed0" / "result.json").is_file() and (new / "seed1" / "result.json").is_file()
    assert sum(line.startswith("renamed ") and "60k_images,_3_epochs__a" in line for line in lines) == 2
    assert {r["run_dir"] for r in records} >= {str(new / "seed0"), str(new / "seed1")}


def test_progress_lines_give_an_eta_from_finished_runs(tmp_path, monkeypatch):
    calls, lines = [], []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    run_study(_study(), tmp_path, log=lines.append)
    progress = [line for line in lines if line.startswith("[")]
    assert progress[0].startswith("[1/4]") and "ETA" not in progress[0]
    assert progress[1].startswith("[2/4]") and "ETA" in progress[1] and "for 3 runs" in progress[1]


def test_seeds_and_overrides_change_the_grid_and_the_config_hash(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    study = _study()
    run_study(study, tmp_path, log=lambda _: None)
    assert calls == [0, 0, 1, 1]
    custom = customise(study, seeds=[2], overrides=["lr=0.01", "model_kwargs.depth=2"])
    assert custom.seeds == [2] and all(c.config.lr == 0.01 and c.config.model_kwargs["depth"] == 2
                                       for c in custom.cells)
    run_study(customise(study, seeds=[0, 1], overrides=["lr=0.01"]), tmp_path, log=lambda _: None)
    assert calls == [0, 0, 1, 1, 0, 0, 1, 1]  # another config: retrained, never mixed with the old results
    with pytest.raises(Exception, match="unknown key"):
        customise(study, overrides=["no_such_key=1"])


def test_compare_writes_figures_beside_the_results_page_with_a_caption(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    monkeypatch.setitem(STUDIES, "s", lambda: _study())
    monkeypatch.setattr("vitlab.compare._weight_section", lambda *a: "")
    page = compare(["s"], root=str(tmp_path / "runs"), results=str(tmp_path / "paper" / "results.md"),
                   formats=("png", "pdf"))
    assert (tmp_path / "paper" / "figures" / "s_curves.png").read_bytes().startswith(MAGIC["png"])
    assert (tmp_path / "paper" / "figures" / "s_curves.pdf").read_bytes().startswith(MAGIC["pdf"])
    assert "![learning curves](figures/s_curves.png)" in page
    assert "95% confidence interval of that mean" in page and "x: epochs" in page
    study_page = (tmp_path / "runs" / "s" / "results.md").read_text()
    assert "![learning curves](../../paper/figures/s_curves.png)" in study_page
    assert figures_dir("runs/compare") == Path("runs/compare/figures")
    assert figures_dir("runs/compare", "out/page.md") == Path("out/figures")
    assert figures_dir("runs/compare", "out/page.md", "docs/figures") == Path("docs/figures")


def test_step_budgeted_studies_plot_against_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    monkeypatch.setitem(STUDIES, "s", lambda: _study(steps=20))
    page = compare(["s"], root=str(tmp_path / "runs"))
    assert "x: optimiser steps" in page and (tmp_path / "runs" / "figures" / "s_curves.png").is_file()
    records = run_study(_study(steps=20), tmp_path / "runs", log=lambda _: None)
    assert [x for x, _ in records[0]["curve"]] == [10, 20]


def test_cli_compare_seeds_overrides_and_listing(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    monkeypatch.setitem(STUDIES, "s", lambda: _study())
    assert main(["compare", "s", "--seeds", "3", "--root", str(tmp_path / "runs"), "lr=0.01"]) == 0
    assert calls == [3, 3] and (tmp_path / "runs" / "figures" / "s_curves.png").is_file()
    capsys.readouterr()
    assert main(["compare", "--list"]) == 0
    listing = capsys.readouterr().out
    for name, fn in STUDIES.items():
        if name == "s":
            continue
        last_words = " ".join(fn.__doc__.split())[-40:]
        assert name in listing and last_words in " ".join(listing.split())  # the whole description, not one line
