"""`vitlab attention` and `vitlab segment`: inputs from image files and dataset items preprocessed with the model's
pretrained_cfg, official CRATE / CRATE-α weights (synthetic, in the official layouts) give the official attention,
the commands write valid PNGs and masks, mIoU against mask files and Fashion-MNIST, and clear errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitlab
from test_convert import official_crate_alpha_state_dict, official_crate_state_dict
from test_plot_weights import FASHION, _tiny_run, assert_png, needs_fashion
from vitlab.cli import main
from vitlab.convert import load_checkpoint
from vitlab.interpret import load_model, record_attention
from vitlab.interpret.render import load_inputs

KW = dict(embed_dim=48, depth=2, num_heads=3, patch_size=8, img_size=32, num_classes=7)
KW_ARGS = ["--model-kwargs", "embed_dim=48", "depth=2", "num_heads=3", "patch_size=8", "img_size=32", "num_classes=7"]


def official_crate_alpha_attention(sd, x, heads, depth, eta=0.1, lmbda=0.1):
    """(B, depth, H, N, N) by hand from the official layout: softmax(w wᵀ / √dh), w = U LN(z) (MSSA)."""
    B = x.shape[0]
    t = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], stride=sd["conv1.weight"].shape[-1])
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t.flatten(2).transpose(1, 2)], 1) + sd["pos_embedding"]
    d, maps = t.shape[-1], []
    for i in range(depth):
        p = f"transformer.layers.{i}."
        u = F.layer_norm(t, (d,), sd[p + "0.norm.weight"], sd[p + "0.norm.bias"], 1e-6)
        w = F.linear(u, sd[p + "0.fn.qkv.weight"]).reshape(B, -1, heads, d // heads).transpose(1, 2)
        attn = (w @ w.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
        maps.append(attn)
        t = t + F.linear((attn @ w).transpose(1, 2).reshape(B, -1, d), sd[p + "0.fn.to_out.0.weight"])
        u = F.layer_norm(t, (d,), sd[p + "1.norm.weight"], sd[p + "1.norm.bias"], 1e-6)
        D, D1 = sd[p + "1.fn.D"], sd[p + "1.fn.D1"]
        z1 = F.relu(eta * (u @ D) - eta * lmbda)
        z2 = F.relu(z1 - eta * ((z1 @ D.t() - u) @ D) - eta * lmbda)
        t = t + z2 @ D1.t()
    return torch.stack(maps, dim=1)


def _image(path: Path, size=(50, 40), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def test_official_crate_alpha_weights_give_the_official_attention(tmp_path):
    sd = official_crate_alpha_state_dict()
    torch.save(sd, tmp_path / "crate_alpha.pth")
    model, _ = load_model(tmp_path / "crate_alpha.pth", "crate_alpha_base_patch16_224", KW)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    got = record_attention(model.double(), x)
    want = official_crate_alpha_attention({k: v.double() for k, v in sd.items()}, x, heads=3, depth=2)
    assert got.shape == (2, 2, 3, 17, 17)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("family", ["crate_alpha", "crate"])
def test_cli_attention_and_segment_on_official_weights(family, tmp_path, capsys):
    sd, name = ((official_crate_alpha_state_dict(), "crate_alpha_base_patch16_224") if family == "crate_alpha"
                else (official_crate_state_dict(), "crate_small_patch16_224"))
    torch.save(sd, tmp_path / "official.pth")
    picture = _image(tmp_path / "photo.jpg")
    argv = [str(tmp_path / "official.pth"), str(picture), "--model", name, "--out", str(tmp_path / "maps"), *KW_ARGS]
    assert main(["attention", *argv[:3], *argv[3:]]) == 0
    assert_png(tmp_path / "maps" / "photo_attention.png")
    assert main(["segment", *argv, "--save-masks", "--num-masks", "2"]) == 0
    out = capsys.readouterr().out
    assert "photo_attention.png" in out and "photo_segment.png" in out
    assert_png(tmp_path / "maps" / "photo_segment.png", min_size=(300, 100))
    for kind in ("attention", "rollout", "maskcut0", "maskcut1"):  # one file per mask, at the photo's size
        with Image.open(tmp_path / "maps" / f"photo_mask_{kind}.png") as mask, Image.open(picture) as photo:
            assert mask.size == photo.size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_segment_scores_against_mask_files(tmp_path, capsys):
    model = vitlab.create_model("vit_tiny_patch4_32", **KW)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        _image(images / f"{name}.png", size=(32, 32))
        Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), 8), mode="L").save(masks / f"{name}.png")
    argv = ["segment", str(tmp_path / "vit.pth"), str(images / "a.png"), str(images / "b.png"), "--model",
            "vit_tiny_patch4_32", "--out", str(tmp_path / "out"), "--masks", str(masks), *KW_ARGS]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in ("attention ", "rollout ", "maskcut ", "attention_head 2"):
        assert method in out
    assert "[2 images]" in out
    (masks / "b.png").unlink()
    assert main(argv) == 2
    assert "b.png" in capsys.readouterr().err


def test_inputs_are_centre_cropped_and_normalised_with_the_pretrained_cfg(tmp_path):
    columns = np.tile(np.arange(12, dtype=np.uint8) * 20, (8, 1))  # (8, 12): value = 20 · column
    Image.fromarray(columns, mode="L").save(tmp_path / "cols.png")
    cfg = dict(input_size=(1, 4, 4), mean=(0.5,), std=(0.25,), crop_pct=1.0, interpolation="nearest")
    inputs = load_inputs([str(tmp_path / "cols.png")], cfg)
    # short side 8 → 4: scale ½; the centred 8 × 8 crop spans columns 2..9, nearest picks columns 3, 5, 7, 9
    assert inputs.display.shape == (1, 4, 4, 1)
    assert inputs.display[0, :, :, 0].tolist() == [[60, 100, 140, 180]] * 4
    torch.testing.assert_close(inputs.images, (inputs.display.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)
    assert inputs.names == ["cols"]
    three = load_inputs([str(tmp_path / "cols.png")] * 2, {**cfg, "input_size": (3, 4, 4), "mean": (0.5,) * 3,
                                                           "std": (0.25,) * 3})
    assert three.images.shape == (2, 3, 4, 4) and three.names == ["cols", "cols_2"]  # gray → RGB, unique names


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    model = vitlab.create_model("vit_tiny_patch4_32", **KW)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    (tmp_path / "notes.txt").write_text("not an image")
    base = ["--model", "vit_tiny_patch4_32", "--out", str(tmp_path / "o"), *KW_ARGS]
    cases = [(["attention", str(tmp_path / "vit.pth"), str(tmp_path / "notes.txt")], "notes.txt"),
             (["attention", str(tmp_path / "vit.pth"), "no/such/file.png"], "no/such/file.png"),
             (["segment", str(tmp_path / "vit.pth")], "nothing to do"),
             (["segment", str(tmp_path / "vit.pth"), "--evaluate", "cifar10"], "fashion_mnist"),
             (["attention", str(tmp_path / "vit.pth"), str(_image(tmp_path / "x.png")), "--layers", "5"],
              "out of range")]
    for argv, expected in cases:
        assert main([*argv, *base]) == 2, argv
        assert expected in capsys.readouterr().err


@needs_fashion
def test_cli_on_a_training_run_uses_the_runs_preprocessing(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    model, _ = load_model(run)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.2860,) and cfg["std"] == (0.3530,)
    out = tmp_path / "maps"
    spec = "fashion_mnist:test:3"
    assert main(["attention", str(run), spec, "fashion_mnist:5", "--out", str(out), "--data-dir", str(FASHION)]) == 0
    assert_png(out / "fashion_mnist_test_3_attention.png")
    assert_png(out / "fashion_mnist_test_5_attention.png")
    capsys.readouterr()
    assert main(["segment", str(run), "--evaluate", "fashion_mnist:test", "--limit", "32", "--data-dir",
                 str(FASHION)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "fashion_mnist test" in lines[0] and len(lines) == 1 + 3 + 2  # three methods + one line per head
    miou = float(lines[1].split()[1])
    assert 0 <= miou <= 100 and "[32 images]" in lines[1]
    assert main(["attention", str(run), "fashion_mnist:test:99999", "--data-dir", str(FASHION)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_load_checkpoint_path_equals_direct_load(tmp_path):
    """The commands' loader gives the same model as `load_checkpoint` on a model built by hand."""
    sd = official_crate_alpha_state_dict()
    torch.save(sd, tmp_path / "a.pth")
    by_hand = load_checkpoint(vitlab.create_model("crate_alpha_base_patch16_224", **KW), tmp_path / "a.pth")
    loaded, label = load_model(tmp_path / "a.pth", "crate_alpha_base_patch16_224", KW)
    assert label == "a"
    for (k, v), (k2, v2) in zip(by_hand.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
