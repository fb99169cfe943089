"""Weight-structure figures (mimetic paper, Figure 1): the products are the paper's W_q⁽ʰ⁾W_k⁽ʰ⁾ᵀ and W_v W_proj
for every layout, mimetic init shows the pinned diagonals, and the API and `vitlab plot-weights` write real PNGs for
run directories, weight files (ours, timm, official CRATE) and `init:MODEL`."""
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import vitlab
from vitlab.cli import main
from vitlab.convert import read_weights
from vitlab.interpret import (format_stats, parse_model_kwargs, plot_checkpoint, plot_init_comparison,
                              plot_weight_products, weight_products)

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="../shared/data/fashion-mnist not present")
SMALL = dict(embed_dim=48, depth=2, num_heads=3)  # d = 48, dh = 16


def paper_qk(q_weight: torch.Tensor, k_weight: torch.Tensor, heads: int) -> torch.Tensor:
    """(H, d, d) W_q⁽ʰ⁾W_k⁽ʰ⁾ᵀ from nn.Linear-style (D, d) weights, by hand: W_q⁽ʰ⁾ = (rows of head h)ᵀ, (d, dh)."""
    dh = q_weight.shape[0] // heads
    return torch.stack([q_weight[h * dh:(h + 1) * dh].T @ k_weight[h * dh:(h + 1) * dh] for h in range(heads)])


def assert_png(path, min_size=(200, 150)) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    with Image.open(path) as image:
        image.load()
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # drawn, not blank


# ----------------------------------------------------------------------------------------------------------------
# The products
@torch.no_grad()
def test_vit_products_match_the_paper_convention_by_hand():
    model = vitlab.create_model("vit_tiny_patch4_32", **SMALL)
    products = weight_products(model)
    assert len(products) == 2
    for p, block in zip(products, model.blocks):
        W, d = block.attn.qkv.weight, 48  # (3d, d): rows q | k | v
        assert p.qk.shape == (3, d, d) and p.vo.shape == (d, d) and p.qk.dtype == torch.float32
        torch.testing.assert_close(p.qk, paper_qk(W[:d], W[d:2 * d], 3))
        W_v, W_proj = W[2 * d:].T, block.attn.proj.weight.T  # (d, d): v = x W_v, out = o W_proj
        torch.testing.assert_close(p.vo, W_v @ W_proj)
        torch.testing.assert_close(p.qk_diag, torch.stack([m.diagonal().mean() for m in p.qk]))
        assert p.stats()["vo_diag"] == pytest.approx((W_v @ W_proj).diagonal().mean().item(), abs=1e-6)


@torch.no_grad()
def test_multihead_attention_products_by_hand():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(24, 4, 48, batch_first=True), 2,
                                  enable_nested_tensor=False)
    products = weight_products(model)
    assert len(products) == 2
    for p, layer in zip(products, model.layers):
        W = layer.self_attn.in_proj_weight  # (3d, d)
        torch.testing.assert_close(p.qk, paper_qk(W[:24], W[24:48], 4))
        torch.testing.assert_close(p.vo, W[48:].T @ layer.self_attn.out_proj.weight.T)


@torch.no_grad()
def test_crate_tied_products_are_positive_semi_definite():
    model = vitlab.create_model("crate_tiny_patch4_32", **SMALL)
    products = weight_products(model)
    for p, block in zip(products, model.blocks):
        U = block.attn.subspace.weight  # (d, d) = [U_1; U_2; U_3], q = k = v
        assert p.tied
        torch.testing.assert_close(p.qk, paper_qk(U, U, 3))  # U_hᵀ U_h
        torch.testing.assert_close(p.qk, p.qk.transpose(1, 2))
        eigenvalues = torch.linalg.eigvalsh(p.qk.double())  # (H, d)
        assert eigenvalues.min() > -1e-6 * eigenvalues.max()
        assert all(torch.linalg.matrix_rank(m, rtol=1e-4) == 16 for m in p.qk)  # rank dh
        assert (p.qk_diag > 0).all()
        torch.testing.assert_close(p.vo, U.T @ block.attn.proj.weight.T)


@torch.no_grad()
def test_hugging_face_vit_products_by_hand():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2,
                                    num_attention_heads=3, intermediate_size=96)
    model = transformers.ViTModel(config)
    products = weight_products(model)
    assert len(products) == 2
    for p, layer in zip(products, model.layers):
        a = layer.attention
        torch.testing.assert_close(p.qk, paper_qk(a.q_proj.weight, a.k_proj.weight, 3))
        torch.testing.assert_close(p.vo, a.v_proj.weight.T @ a.o_proj.weight.T)


def test_mimetic_init_shows_the_pinned_diagonals_and_default_init_does_not():
    """docs/mimetic.md at d = 192, H = 3: diag(W_q W_kᵀ) +0.3945, diag(W_v W_proj) −0.4002, off-diagonal 0."""
    mimetic = weight_products(vitlab.create_model("vit_tiny_patch2_32", depth=2, init="mimetic",
                                                  init_kwargs=dict(seed=0)))
    qk = torch.stack([p.qk_diag for p in mimetic])  # (layers, H)
    assert qk.shape == (2, 3) and qk.mean().item() == pytest.approx(0.395, abs=0.005) and qk.std() < 0.005
    assert all(p.vo_diag == pytest.approx(-0.40, abs=0.01) for p in mimetic)
    assert all(p.qk_offdiag.abs().max() < 0.002 and abs(p.vo_offdiag) < 0.002 for p in mimetic)
    default = weight_products(vitlab.create_model("vit_tiny_patch2_32", depth=2))
    assert all(p.qk_diag.abs().max() < 0.01 and abs(p.vo_diag) < 0.01 for p in default)
    table = format_stats(mimetic)
    assert len(table.splitlines()) == 3 and "+0.39" in table and "-0.40" in table


# ----------------------------------------------------------------------------------------------------------------
# The figures
def test_plot_functions_write_pngs(tmp_path):
    products = weight_products(vitlab.create_model("vit_tiny_patch4_32", **{**SMALL, "depth": 3}, init="mimetic",
                                                   init_kwargs=dict(seed=0)))
    path = plot_weight_products(products, tmp_path / "sub" / "grid.png", title="mimetic", max_dim=32)
    assert_png(path)
    assert_png(plot_weight_products(products, tmp_path / "shared.png", layers=[-1], shared_limits=True))
    with Image.open(tmp_path / "sub" / "grid.png") as one_per_layer, Image.open(tmp_path / "shared.png") as last:
        assert one_per_layer.size[1] > 2 * last.size[1]  # three rows vs one
    result = plot_init_comparison("vit_tiny_patch4_32", tmp_path / "init.png", seed=1, **SMALL)
    assert_png(tmp_path / "init.png", min_size=(600, 200))
    assert result["mimetic"][0].qk_diag.min() > 0.3 and result["mimetic"][0].vo_diag < -0.3
    with pytest.raises(ValueError, match="out of range"):
        plot_weight_products(products, tmp_path / "x.png", layers=[3])


def _tiny_run(tmp_path: Path) -> Path:
    from vitlab.train import get_preset, train

    config = get_preset("fashion_mnist_vit")
    for key, value in dict(model_kwargs=dict(patch_size=7, embed_dim=32, depth=2, num_heads=2), train_subset=256,
                           eval_subset=128, batch_size=64, epochs=1, max_steps=2, eval_every=1.0, log_every=1,
                           data_dir=str(FASHION), out_dir=str(tmp_path / "run"), progress=False).items():
        setattr(config, key, value)
    train(config)
    return tmp_path / "run"


@needs_fashion
def test_cli_plots_a_training_run(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    assert main(["plot-weights", str(run), "--out", str(tmp_path / "run.png"), "--max-dim", "16"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "run.png") in out and "mean diag(W_q W_k^T)" in out and len(out.splitlines()) >= 4
    assert_png(tmp_path / "run.png")
    weights = next(run.glob("*/model.safetensors"))  # best/ or last/
    path, products = plot_checkpoint(str(weights), tmp_path / "file.png", layers=[1])
    assert_png(path)
    (label, got), = products.items()
    assert label == f"run_{weights.parent.name}" and got[0].qk.shape == (2, 32, 32)
    saved = read_weights(weights)  # the trained weights, by hand
    W = saved["blocks.1.attn.qkv.weight"]  # (3·32, 32)
    torch.testing.assert_close(got[1].qk, paper_qk(W[:32], W[32:64], 2))
    torch.testing.assert_close(got[1].vo, W[64:].T @ saved["blocks.1.attn.proj.weight"].T)


def test_cli_plots_a_safetensors_file_with_model(tmp_path, capsys):
    from safetensors.torch import save_file

    model = vitlab.create_model("vit_tiny_patch4_32", num_classes=7, in_chans=1, **SMALL)
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    # depth, num_classes and in_chans are read off the file; the width and heads come from --model-kwargs
    argv = ["plot-weights", str(tmp_path / "weights.safetensors"), "--model", "vit_tiny_patch4_32",
            "--out", str(tmp_path / "w.png"), "--layers", "0,1", "--model-kwargs", "embed_dim=48", "num_heads=3"]
    assert main(argv) == 0
    assert "weights:" in capsys.readouterr().out
    assert_png(tmp_path / "w.png")
    _, products = plot_checkpoint(str(tmp_path / "weights.safetensors"), tmp_path / "w2.png",
                                  model="vit_tiny_patch4_32", model_kwargs=dict(embed_dim=48, num_heads=3))
    for p, q in zip(products["weights"], weight_products(model)):
        torch.testing.assert_close(p.qk, q.qk)
        torch.testing.assert_close(p.vo, q.vo)


def test_cli_plots_a_timm_state_dict(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2)  # 1000 classes
    torch.save(reference.state_dict(), tmp_path / "timm_vit.pth")
    argv = ["plot-weights", str(tmp_path / "timm_vit.pth"), "--model", "vit_tiny_patch4_32", "--out",
            str(tmp_path / "timm.png")]
    assert main(argv) == 0
    assert_png(tmp_path / "timm.png")
    _, products = plot_checkpoint(str(tmp_path / "timm_vit.pth"), tmp_path / "t.png", model="vit_tiny_patch4_32")
    for p, q in zip(products["timm_vit"], weight_products(reference)):  # timm's own Attention layout
        torch.testing.assert_close(p.qk, q.qk)
        torch.testing.assert_close(p.vo, q.vo)


def test_official_crate_file_products(tmp_path):
    g = torch.Generator().manual_seed(0)
    d, patch, n = 48, 8, (32 // 8) ** 2 + 1
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {"pos_embedding": r(1, n, d), "cls_token": r(1, 1, d), "to_patch_embedding.1.weight": 1 + r(192),
          "to_patch_embedding.1.bias": r(192), "to_patch_embedding.2.weight": r(d, 192),
          "to_patch_embedding.2.bias": r(d), "to_patch_embedding.3.weight": 1 + r(d),
          "to_patch_embedding.3.bias": r(d), "mlp_head.0.weight": 1 + r(d), "mlp_head.0.bias": r(d),
          "mlp_head.1.weight": r(7, d), "mlp_head.1.bias": r(7)}
    for i in range(2):
        p = f"transformer.layers.{i}."
        sd.update({p + "0.norm.weight": 1 + r(d), p + "0.norm.bias": r(d), p + "0.fn.qkv.weight": r(d, d),
                   p + "0.fn.to_out.0.weight": r(d, d), p + "0.fn.to_out.0.bias": r(d),
                   p + "1.norm.weight": 1 + r(d), p + "1.norm.bias": r(d), p + "1.fn.weight": r(d, d)})
    torch.save(sd, tmp_path / "crate.pth")
    kwargs = dict(img_size=32, patch_size=patch, num_classes=7, **SMALL)
    path, products = plot_checkpoint(str(tmp_path / "crate.pth"), tmp_path / "crate.png",
                                     model="crate_small_patch16_224", model_kwargs=kwargs)
    assert_png(path)
    for i, p in enumerate(products["crate"]):
        U = sd[f"transformer.layers.{i}.0.fn.qkv.weight"]  # official q = k = v projection, heads = row blocks
        torch.testing.assert_close(p.qk, paper_qk(U, U, 3))


def test_cli_init_comparison(tmp_path, capsys):
    argv = ["plot-weights", "init:vit_tiny_patch4_32", "--out", str(tmp_path / "init.png"), "--model-kwargs",
            "embed_dim=48", "depth=3", "num_heads=3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "default:" in out and "mimetic:" in out and out.count("\n    2  ") == 2
    assert_png(tmp_path / "init.png", min_size=(600, 200))


def printed_layers(out: str) -> dict[str, list[int]]:
    """{label: the layer indices of its statistics table} from `vitlab plot-weights` output."""
    tables, label = {}, None
    for line in out.splitlines():
        if line.endswith(":"):
            label = line[:-1]
            tables[label] = []
        elif label is not None and line[:5].strip().isdigit():
            tables[label].append(int(line[:5]))
    return tables


def test_cli_layers_select_the_table_rows_as_the_figure_rows(tmp_path, capsys):
    argv = ["plot-weights", "init:vit_tiny_patch4_32", "--out", str(tmp_path / "init.png"), "--layers", "0,-2",
            "--max-dim", "8", "--model-kwargs", "embed_dim=16", "depth=4", "num_heads=1"]
    assert main(argv) == 0  # negative indices count from the end, as in the figure
    assert printed_layers(capsys.readouterr().out) == {"default": [0, 2], "mimetic": [0, 2]}
    model = vitlab.create_model("vit_tiny_patch4_32", embed_dim=16, depth=4, num_heads=1)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    argv = ["plot-weights", str(tmp_path / "w.pth"), "--model", "vit_tiny_patch4_32", "--out", str(tmp_path / "w.png"),
            "--layers", "3,1", "--max-dim", "8", "--model-kwargs", "embed_dim=16", "num_heads=1"]
    assert main(argv) == 0
    assert printed_layers(capsys.readouterr().out) == {"w": [3, 1]}
    table = format_stats(weight_products(model)).splitlines()  # without layers: every layer
    assert [int(line[:5]) for line in table[1:]] == [0, 1, 2, 3]
    assert format_stats(weight_products(model), layers=[-1]).splitlines() == [table[0], table[4]]


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert main(["plot-weights", "init:no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    torch.save(vitlab.create_model("vit_tiny_patch4_32", **SMALL).state_dict(), tmp_path / "w.pth")
    assert main(["plot-weights", str(tmp_path / "w.pth")]) == 2
    assert "--model NAME" in capsys.readouterr().err
    assert main(["plot-weights", str(tmp_path / "w.pth"), "--model", "vit_tiny_patch4_3"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["plot-weights", str(tmp_path / "missing.pth"), "--model", "vit_tiny_patch4_32"]) == 2
    assert "not found" in capsys.readouterr().err
    # a width the file does not have: the strict loader's report
    assert main(["plot-weights", str(tmp_path / "w.pth"), "--model", "vit_tiny_patch4_32"]) == 2
    assert "shape mismatches" in capsys.readouterr().err
    assert parse_model_kwargs(["img_size=32", "pos_embed=sincos", "betas=(0.9, 0.95)"]) == dict(
        img_size=32, pos_embed="sincos", betas=(0.9, 0.95))
    with pytest.raises(ValueError, match="key=value"):
        parse_model_kwargs(["img_size"])
