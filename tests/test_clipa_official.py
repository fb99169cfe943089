"""The official CRATE-α-CLIPA models: random weights written in the official `clipa_model.py` layout load strictly
into `crate_alpha_clipa_*`, and vitlab's towers give what an independent re-implementation of the official forward
gives; the 'mha' attention switch of CRATE-α; parameter counts of the published sizes."""
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.convert import CheckpointMismatchError, load_checkpoint
from vitlab.convert import convert_state_dict
from vitlab.convert.official import detect_layout
from vitlab.init import mimetic_init_
from vitlab.interpret import patch_features, record_attention
from vitlab.models import CLIP, CRATEAlpha

# A small official-layout configuration: vision d 64, 2 layers, 4 heads, patch 14 at 56 px (4 × 4 grid);
# text w = E = 64, 2 layers, 4 heads, vocab 100, context 8.
D, LAYERS, HEADS, P, IMG, E = 64, 2, 4, 14, 56, 64
TEXT = dict(vocab_size=100, context_length=8, width=E, layers=2, heads=4)
ETA = LAM = 0.1


def official_shapes(d=D, layers=LAYERS, patch=P, img=IMG, embed=E, width=TEXT["width"], text_layers=TEXT["layers"],
                    vocab=TEXT["vocab_size"], context=TEXT["context_length"]) -> dict[str, tuple]:
    """Every key of the official `clipa_model.py` state dict with its shape (a bare dict, as the published files)."""
    n = (img // patch) ** 2
    shapes = {"visual.conv1.weight": (d, 3, patch, patch), "visual.class_embedding": (d,),
              "visual.positional_embedding": (n + 1, d), "visual.ln_post.weight": (d,), "visual.ln_post.bias": (d,),
              "visual.proj": (d, embed)}
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        shapes.update({b + "attn.in_proj_weight": (3 * d, d), b + "attn.out_proj.weight": (d, d),
                       b + "mlp.c_fc": (d, 4 * d), b + "mlp.c_proj": (d, 4 * d)})
        shapes.update({b + f"{ln}.{p}": (d,) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")})
    shapes.update({"token_embedding.weight": (vocab, width), "positional_embedding": (context, width),
                   "ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, embed),
                   "logit_scale": ()})
    for i in range(text_layers):
        b = f"transformer.resblocks.{i}."
        shapes.update({b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                       b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                       b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
                       b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,)})
        shapes.update({b + f"{ln}.{p}": (width,) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")})
    return shapes


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout at the small size: LayerNorm gains near 1, embeddings and the class
    token std 0.5, the stem 0.05, everything else 0.1-0.2 (so the ODL codes are far from all-zero)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes().items():
        std = {"visual.conv1.weight": 0.05, "visual.class_embedding": 0.5, "visual.positional_embedding": 0.5,
               "token_embedding.weight": 0.5, "positional_embedding": 0.5}.get(key, 0.2 if key.endswith(
                   ("in_proj_weight", "mlp.c_fc", "mlp.c_proj", "proj", "text_projection")) else 0.1)
        sd[key] = std * torch.randn(shape, generator=g) + (1.0 if key.endswith("ln_1.weight") or key.endswith(
            ("ln_2.weight", "ln_post.weight", "ln_final.weight")) else 0.0)
    sd["logit_scale"] = torch.tensor(4.6)
    return sd


# -- an independent forward of the official structure: plain tensor ops, (L, N, E) attention as the official code --

def _ln(x, sd, name):
    return F.layer_norm(x.float(), x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def _mha(x, sd, prefix, heads):  # x (L, N, E)
    return F.multi_head_attention_forward(
        x, x, x, x.shape[-1], heads, sd[prefix + "in_proj_weight"], sd.get(prefix + "in_proj_bias"), None, None,
        False, 0.0, sd[prefix + "out_proj.weight"], sd.get(prefix + "out_proj.bias"), training=False,
        need_weights=False)[0]


def official_encode_image(sd, images):
    B = images.shape[0]
    x = F.conv2d(images, sd["visual.conv1.weight"], stride=P)  # (B, d, g, g), no bias
    x = x.reshape(B, D, -1).permute(0, 2, 1)  # (B, g·g, d) row-major grid
    cls = sd["visual.class_embedding"] + torch.zeros(B, 1, D)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]  # (B, N+1, d), no ln_pre
    x = x.permute(1, 0, 2)  # (N+1, B, d)
    for i in range(LAYERS):
        b = f"visual.transformer.resblocks.{i}."
        x = x + _mha(_ln(x, sd, b + "ln_1"), sd, b + "attn.", HEADS)
        h = _ln(x, sd, b + "ln_2")
        c_fc, c_proj = sd[b + "mlp.c_fc"], sd[b + "mlp.c_proj"]
        z1 = F.relu(ETA * (h @ c_fc) - ETA * LAM)
        lasso_grad = ((z1 @ c_fc.T) - h) @ c_fc
        z2 = F.relu(z1 - ETA * lasso_grad - ETA * LAM)
        x = x + z2 @ c_proj.T
    x = x.permute(1, 0, 2)  # (B, N+1, d)
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]  # (B, E)


def official_encode_text(sd, text):
    x = sd["token_embedding.weight"][text] + sd["positional_embedding"][:text.shape[1]]  # (B, L, w)
    x = x.permute(1, 0, 2)  # (L, B, w)
    for i in range(TEXT["layers"]):
        b = f"transformer.resblocks.{i}."
        x = x + _mha(_ln(x, sd, b + "ln_1"), sd, b + "attn.", TEXT["heads"])  # no causal mask
        h = F.linear(_ln(x, sd, b + "ln_2"), sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])
        x = x + F.linear(F.gelu(h, approximate="tanh"), sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    x = _ln(x.permute(1, 0, 2), sd, "ln_final")  # (B, L, w)
    return x[:, -1] @ sd["text_projection"].T  # the LAST position; the projection applied transposed


# -- helpers --------------------------------------------------------------------------------------------------------

def small_kwargs(img_size=IMG):
    """`embed_dim` is the joint space E; the image tower's sizes go in image_kwargs (as the `clip` builder)."""
    return dict(embed_dim=E, image_kwargs=dict(embed_dim=D, depth=LAYERS, num_heads=HEADS, img_size=img_size),
                text_kwargs=TEXT)


@pytest.fixture
def official_file(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "crate_alpha_CLIPA_small.pth"
    torch.save(sd, path)
    return sd, path


def test_loads_strictly_and_matches_the_official_forward(official_file):
    sd, path = official_file
    model = vitlab.create_model("crate_alpha_clipa_l14", checkpoint_path=str(path), **small_kwargs()).eval()
    assert isinstance(model, CLIP) and model.pretrained_cfg["architecture"] == "crate_alpha_clipa_large_patch14_224"
    assert not torch.allclose(sd["text_projection"], sd["text_projection"].T)  # the transposition matters
    images = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    text = torch.randint(1, TEXT["vocab_size"], (3, TEXT["context_length"]),
                         generator=torch.Generator().manual_seed(2))
    text[0, 5:] = 0  # padding (id 0) at the end: pooling still takes the last position
    with torch.no_grad():
        image_features, text_features = model.encode_image(images), model.encode_text(text)
        expected_image, expected_text = official_encode_image(sd, images), official_encode_text(sd, text)
    assert image_features.abs().mean() > 0.1 and text_features.abs().mean() > 0.1
    torch.testing.assert_close(image_features, expected_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_features, expected_text, rtol=1e-5, atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(4.6)
    # the image tower is CRATE-α with separate q / k / v and a bias-free stem
    assert model.visual.blocks[0].attention == "mha" and model.visual.patch_embed.proj.bias is None


def test_layout_detection_and_readable_mismatch_reports(official_file):
    sd, _ = official_file
    assert detect_layout(sd) == "crate_alpha_clipa_official"
    model = vitlab.create_model("crate_alpha_clipa_l14", **small_kwargs())
    missing = {k: v for k, v in sd.items() if k != "visual.transformer.resblocks.1.mlp.c_proj"}
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint \(1\)[\s\S]*visual\.blocks\.1"
                                                      r"\.ista\.D1"):
        load_checkpoint(model, missing)
    wrong = {**sd, "positional_embedding": torch.zeros(TEXT["context_length"] + 1, TEXT["width"])}
    with pytest.raises(CheckpointMismatchError, match=r"text\.positional_embedding: checkpoint \(9, 64\) vs "
                                                      r"model \(8, 64\)"):
        load_checkpoint(model, wrong)
    rectangular = {**sd, "text_projection": torch.zeros(TEXT["width"], 32)}
    with pytest.raises(ValueError, match=r"text_projection has shape \(64, 32\)"):
        load_checkpoint(model, rectangular)


def test_loading_at_another_image_size_resamples_the_position_table(official_file):
    sd, path = official_file
    model = vitlab.create_model("crate_alpha_clipa_l14", checkpoint_path=str(path), **small_kwargs(img_size=28))
    assert model.visual.pos_embed.shape == (1, 1 + 4, D)
    assert model.pretrained_cfg["input_size"] == (3, 28, 28)
    torch.testing.assert_close(model.visual.cls_token.flatten(), sd["visual.class_embedding"])
    torch.testing.assert_close(model.visual.pos_embed[0, 0], sd["visual.positional_embedding"][0])  # class slot


@pytest.mark.parametrize("name, total, visual", [
    ("crate_alpha_clipa_large_patch14_224", 640_165_889, 302_956_544),
    ("crate_alpha_clipa_huge_patch14_224", 967_866_369, 630_394_880),
])
def test_parameter_counts_of_the_published_sizes(name, total, visual):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.visual.parameters()) == visual
    assert sum(p.numel() for p in model.text.parameters()) == 336_160_768  # the 'H' text tower of both
    cfg = model.pretrained_cfg
    assert cfg["task"] == "clip" and cfg["file_layout"] == "crate_alpha_clipa_official"
    assert cfg["url"].endswith(("CLIPA_L14.pth", "CLIPA_H14.pth")) and cfg["input_size"] == (3, 224, 224)
    assert (cfg["tokenizer"], cfg["context_length"], cfg["strip_sep_token"]) == ("bert", 32, True)


@pytest.mark.parametrize("name, d, layers", [("crate_alpha_clipa_l14", 1024, 24), ("crate_alpha_clipa_h14", 1280, 32)])
def test_full_size_official_layout_converts_to_exactly_our_keys_and_shapes(name, d, layers):
    with torch.device("meta"):  # no memory: shapes only
        model = vitlab.create_model(name)
        official = {k: torch.empty(shape) for k, shape in official_shapes(
            d, layers, 14, 224, 1024, 1024, 24, 32000, 32).items()}
    converted, layout = convert_state_dict(official, model)
    assert layout == "crate_alpha_clipa_official"
    ours = model.state_dict()
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)


def test_builder_overrides():
    with torch.device("meta"):
        huge = vitlab.create_model("crate_alpha_clipa_h14", img_size=112, depth=2)  # top-level image overrides
        assert (huge.visual.embed_dim, len(huge.visual.blocks), huge.visual.patch_embed.img_size) == (1280, 2, 112)
        assert huge.pretrained_cfg["input_size"] == (3, 112, 112) and huge.visual_proj.weight.shape == (1024, 1280)
        large = vitlab.create_model("crate_alpha_clipa_l14", image_kwargs=dict(depth=3), text_kwargs=dict(layers=1))
        assert len(large.visual.blocks) == 3 and len(large.text.transformer.resblocks) == 1
    with pytest.raises(ValueError, match="both at the top level and in image_kwargs"):
        vitlab.create_model("crate_alpha_clipa_l14", depth=2, image_kwargs=dict(depth=3))
    with pytest.raises(ValueError, match="no classifier"):
        vitlab.create_model("crate_alpha_clipa_l14", num_classes=10)


def test_aliases_and_generic_clip_builder():
    assert vitlab.models.resolve_model_name("crate_alpha_clipa_h14") == "crate_alpha_clipa_huge_patch14_224"
    model = vitlab.create_model("clip", image_model="vit_tiny_patch16_224", embed_dim=16,
                                image_kwargs=dict(img_size=32, embed_dim=32, depth=1, num_heads=2),
                                text_kwargs=dict(vocab_size=50, context_length=8, width=32, layers=1, heads=2))
    image, text, _ = model(torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 8)))
    assert image.shape == text.shape == (2, 16)
    assert model.pretrained_cfg["task"] == "clip" and model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_mimetic_init_reaches_the_clipa_image_tower():
    torch.manual_seed(0)
    model = vitlab.create_model("crate_alpha_clipa_l14", **small_kwargs())
    before = model.visual.blocks[0].attn.qkv.weight.clone()
    assert mimetic_init_(model, seed=0) == LAYERS + TEXT["layers"]  # image 'mha' blocks + text MHA layers
    assert not torch.equal(model.visual.blocks[0].attn.qkv.weight, before)


def test_mha_switch_in_a_crate_alpha_classifier():
    torch.manual_seed(0)
    model = CRATEAlpha(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2,
                       attention="mha", patch_embed_bias=False)
    keys = set(model.state_dict())
    assert "blocks.0.attn.qkv.weight" in keys and "blocks.0.attn.qkv.bias" not in keys
    assert not any("subspace" in k for k in keys) and "patch_embed.proj.bias" not in keys
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)  # JAX-style N(0, 0.02)
    decay_free = model.no_weight_decay()
    assert "blocks.0.attn.qkv.weight" not in decay_free and "blocks.0.ista.D" in decay_free
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    out.square().mean().backward()
    assert out.shape == (2, 5) and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    attn = record_attention(model.eval(), x)
    assert attn.shape == (2, 2, 2, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2, 17))
    assert patch_features(model, x, kind="keys").shape == (2, 16, 32)
    with pytest.raises(ValueError, match="attention must be"):
        CRATEAlpha(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, attention="linear")
