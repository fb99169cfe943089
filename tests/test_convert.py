"""Official-layout checkpoints load into our models and give the official forward's logits.

The reference forwards below are written from ../shared/design/official_layouts.md (§1 CRATE, §2 CRATE-α PyTorch
port), straight on the official state-dict keys, independently of vitlab's modules.
"""
import pickle

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.convert import CheckpointMismatchError, detect_layout, load_checkpoint, read_weights


def official_crate_state_dict(d=48, depth=2, heads=3, patch=8, img=32, classes=7, channels=3):
    g = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    n, pd = (img // patch) ** 2 + 1, channels * patch * patch
    sd = {"pos_embedding": r(1, n, d), "cls_token": r(1, 1, d),
          "to_patch_embedding.1.weight": 1 + r(pd), "to_patch_embedding.1.bias": r(pd),
          "to_patch_embedding.2.weight": r(d, pd), "to_patch_embedding.2.bias": r(d),
          "to_patch_embedding.3.weight": 1 + r(d), "to_patch_embedding.3.bias": r(d)}
    for i in range(depth):
        p = f"transformer.layers.{i}."
        sd.update({p + "0.norm.weight": 1 + r(d), p + "0.norm.bias": r(d), p + "0.fn.qkv.weight": r(d, d),
                   p + "0.fn.to_out.0.weight": r(d, d), p + "0.fn.to_out.0.bias": r(d),
                   p + "1.norm.weight": 1 + r(d), p + "1.norm.bias": r(d), p + "1.fn.weight": r(d, d)})
    sd.update({"mlp_head.0.weight": 1 + r(d), "mlp_head.0.bias": r(d), "mlp_head.1.weight": r(classes, d),
               "mlp_head.1.bias": r(classes)})
    return sd


def official_crate_forward(sd, x, heads, patch, depth, eta=0.1, lambd=0.1):
    B, C, H, W = x.shape
    # Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')
    t = x.reshape(B, C, H // patch, patch, W // patch, patch).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, patch * patch * C)
    t = F.layer_norm(t, t.shape[-1:], sd["to_patch_embedding.1.weight"], sd["to_patch_embedding.1.bias"], 1e-5)
    t = F.linear(t, sd["to_patch_embedding.2.weight"], sd["to_patch_embedding.2.bias"])
    t = F.layer_norm(t, t.shape[-1:], sd["to_patch_embedding.3.weight"], sd["to_patch_embedding.3.bias"], 1e-5)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1) + sd["pos_embedding"]
    d = t.shape[-1]
    for i in range(depth):
        p = f"transformer.layers.{i}."
        u = F.layer_norm(t, (d,), sd[p + "0.norm.weight"], sd[p + "0.norm.bias"], 1e-5)
        w = F.linear(u, sd[p + "0.fn.qkv.weight"]).reshape(B, -1, heads, d // heads).transpose(1, 2)
        attn = (w @ w.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
        out = (attn @ w).transpose(1, 2).reshape(B, -1, d)
        z = t + F.linear(out, sd[p + "0.fn.to_out.0.weight"], sd[p + "0.fn.to_out.0.bias"])
        u = F.layer_norm(z, (d,), sd[p + "1.norm.weight"], sd[p + "1.norm.bias"], 1e-5)
        Wd = sd[p + "1.fn.weight"]
        x1 = F.linear(u, Wd)
        grad_1 = F.linear(x1, Wd.t())
        grad_2 = F.linear(u, Wd.t())
        t = F.relu(u + eta * (grad_2 - grad_1) - eta * lambd)
    cls = F.layer_norm(t[:, 0], (d,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], 1e-5)
    return F.linear(cls, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])


def official_crate_alpha_state_dict(d=48, depth=2, patch=8, img=32, classes=7):
    g = torch.Generator().manual_seed(2)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    n = (img // patch) ** 2 + 1
    sd = {"pos_embedding": r(1, n, d), "cls_token": r(1, 1, d), "conv1.weight": r(d, 3, patch, patch),
          "conv1.bias": r(d)}
    for i in range(depth):
        p = f"transformer.layers.{i}."
        sd.update({p + "0.norm.weight": 1 + r(d), p + "0.norm.bias": r(d), p + "0.fn.qkv.weight": r(d, d),
                   p + "0.fn.to_out.0.weight": r(d, d), p + "1.norm.weight": 1 + r(d), p + "1.norm.bias": r(d),
                   p + "1.fn.D": r(d, 4 * d), p + "1.fn.D1": r(d, 4 * d)})
    sd.update({"mlp_head.0.weight": 1 + r(d), "mlp_head.0.bias": r(d), "mlp_head.1.weight": r(classes, d),
               "mlp_head.1.bias": r(classes)})
    return sd


def official_crate_alpha_forward(sd, x, heads, depth, eta=0.1, lmbda=0.1):
    B = x.shape[0]
    t = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], stride=sd["conv1.weight"].shape[-1])
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1) + sd["pos_embedding"]
    d = t.shape[-1]
    for i in range(depth):
        p = f"transformer.layers.{i}."
        u = F.layer_norm(t, (d,), sd[p + "0.norm.weight"], sd[p + "0.norm.bias"], 1e-6)
        w = F.linear(u, sd[p + "0.fn.qkv.weight"]).reshape(B, -1, heads, d // heads).transpose(1, 2)
        attn = (w @ w.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
        t = t + F.linear((attn @ w).transpose(1, 2).reshape(B, -1, d), sd[p + "0.fn.to_out.0.weight"])
        u = F.layer_norm(t, (d,), sd[p + "1.norm.weight"], sd[p + "1.norm.bias"], 1e-6)
        D, D1 = sd[p + "1.fn.D"], sd[p + "1.fn.D1"]
        z1 = F.relu(eta * (u @ D) - eta * lmbda)
        residual = z1 @ D.t() - u
        z2 = F.relu(z1 - eta * (residual @ D) - eta * lmbda)
        t = t + z2 @ D1.t()
    cls = F.layer_norm(t[:, 0], (d,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], 1e-5)
    return F.linear(cls, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])


CRATE_KW = dict(embed_dim=48, depth=2, num_heads=3, patch_size=8, img_size=32, num_classes=7)


@pytest.mark.parametrize("wrap", ["bare", "module_prefix_in_state_dict"])
def test_official_crate_checkpoint_gives_official_logits(wrap, tmp_path):
    sd = official_crate_state_dict()
    saved = sd if wrap == "bare" else {
        "epoch": 90, "arch": "CRATE_small", "best_acc1": torch.tensor(69.2),
        "state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(saved, path)
    model = vitlab.create_model("crate_small_patch16_224", **CRATE_KW).eval()
    load_checkpoint(model, path)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    sd64 = {k: v.double() for k, v in sd.items()}
    torch.testing.assert_close(model.double()(x), official_crate_forward(sd64, x, heads=3, patch=8, depth=2),
                               rtol=1e-10, atol=1e-10)


def test_official_crate_alpha_checkpoint_gives_official_logits(tmp_path):
    sd = official_crate_alpha_state_dict()
    path = tmp_path / "crate_alpha_B16.pth"
    torch.save(sd, path)  # the port's files are bare state dicts
    model = vitlab.create_model("crate_alpha_base_patch16_224", **CRATE_KW).eval()
    assert detect_layout(read_weights(path)) == "crate_alpha_official"
    load_checkpoint(model, path)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)  # float64: even the head LayerNorm's eps must match
    sd64 = {k: v.double() for k, v in sd.items()}
    torch.testing.assert_close(model.double()(x), official_crate_alpha_forward(sd64, x, heads=3, depth=2),
                               rtol=1e-10, atol=1e-10)


def test_mismatch_report_lists_every_difference_and_leaves_the_model_untouched():
    sd = official_crate_alpha_state_dict()
    del sd["transformer.layers.1.1.fn.D1"]
    sd["transformer.layers.0.1.fn.D"] = torch.zeros(48, 96)
    sd["extra.weight"] = torch.zeros(1)
    model = vitlab.create_model("crate_alpha_base_patch16_224", **CRATE_KW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, sd)
    message = str(err.value)
    assert "blocks.1.ista.D1" in message and "extra.weight" in message
    assert "blocks.0.ista.D: checkpoint (48, 96) vs model (48, 192)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_model_family_is_reported():
    model = vitlab.create_model("crate_small_patch16_224", **CRATE_KW)
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint"):
        load_checkpoint(model, official_crate_alpha_state_dict())


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(ValueError, match="evil.pth"):
        read_weights(path)
    assert "must never run" not in capsys.readouterr().out


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        read_weights(bad)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_weights(tmp_path / "absent.pth")


def test_nanogpt_style_compiled_prefix_and_model_wrapper(tmp_path):
    model = vitlab.create_model("vit_tiny_patch4_32", depth=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "iter_num": 3}, path)
    fresh = vitlab.create_model("vit_tiny_patch4_32", depth=1)
    load_checkpoint(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_skip_head_keeps_a_new_classifier():
    model = vitlab.create_model("crate_alpha_base_patch16_224", **{**CRATE_KW, "num_classes": 3})
    load_checkpoint(model, official_crate_alpha_state_dict(), skip_head=True)
    assert model.head.out_features == 3


@pytest.mark.parametrize("classifier", [True, False])
def test_hugging_face_vit_weights_give_hugging_face_logits(classifier, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192,
                                    image_size=32, patch_size=8, num_labels=7)
    hf = (transformers.ViTForImageClassification(config) if classifier else transformers.ViTModel(config)).eval()
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    model = vitlab.create_model("vit_tiny_patch16_224", embed_dim=48, depth=2, num_heads=3, img_size=32,
                                patch_size=8, num_classes=7 if classifier else 0).eval()
    assert detect_layout(read_weights(path)) == "hf_vit"
    load_checkpoint(model, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if classifier:
            torch.testing.assert_close(model(x), hf(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
        else:  # a bare ViTModel: our final-norm tokens equal its last_hidden_state
            torch.testing.assert_close(model.forward_features(x), hf(pixel_values=x).last_hidden_state,
                                       rtol=1e-4, atol=1e-4)


def test_hugging_face_vit_pre_v5_key_names():
    """The same weights under transformers 4.x names (official_layouts.md §7) load to the same model."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192,
                                    image_size=32, patch_size=8, num_labels=7)
    hf = transformers.ViTForImageClassification(config).eval()
    renames = [(".layers.", ".encoder.layer."), ("attention.q_proj", "attention.attention.query"),
               ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
               ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
               ("mlp.fc2", "output.dense")]
    old = {}
    for key, value in hf.state_dict().items():
        for new, legacy in renames:
            key = key.replace(new, legacy)
        old[key] = value
    assert "vit.encoder.layer.1.attention.attention.query.weight" in old
    kwargs = dict(embed_dim=48, depth=2, num_heads=3, img_size=32, patch_size=8, num_classes=7)
    a = load_checkpoint(vitlab.create_model("vit_tiny_patch16_224", **kwargs), hf.state_dict()).eval()
    b = load_checkpoint(vitlab.create_model("vit_tiny_patch16_224", **kwargs), old).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
