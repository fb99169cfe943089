"""The CLIP model: any image tower + an open_clip-layout causal text tower, logit scale, mimetic init of both."""
import math

import pytest
import torch

from vitlab.init import mimetic_init_
from vitlab.models.clip import create_clip_model

TEXT = dict(vocab_size=100, context_length=16, width=32, layers=2, heads=2)


def small(image_model="crate_alpha_tiny_patch4_32"):
    torch.manual_seed(0)
    return create_clip_model(image_model, 24, dict(embed_dim=32, depth=2, num_heads=2), TEXT).eval()


def tokens(batch=3, eot_at=(5, 9, 15)):
    text = torch.randint(1, 90, (batch, 16))
    for row, position in enumerate(eot_at):
        text[row, position] = 99  # the end-of-text token has the largest id (CLIP's pooling rule)
        text[row, position + 1:] = 0
    return text


@pytest.mark.parametrize("image_model", ["vit_tiny_patch4_32", "crate_tiny_patch4_32", "crate_alpha_tiny_patch4_32"])
def test_every_family_is_an_image_tower(image_model):
    model = small(image_model).train()
    image, text, scale = model(torch.randn(3, 3, 32, 32), tokens())
    assert image.shape == text.shape == (3, 24)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    (scale * image @ text.t()).logsumexp(-1).sum().backward()
    assert model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.text.token_embedding.weight.grad.abs().sum() > 0


def test_text_tower_is_causal_and_pools_at_end_of_text():
    model = small()
    text = tokens()
    base = model.encode_text(text)
    after = text.clone()
    after[0, 6:] = 7  # tokens after the end-of-text (position 5) cannot reach it through causal attention
    torch.testing.assert_close(model.encode_text(after)[0], base[0])
    before = text.clone()
    before[0, 2] = 3  # a token before it does
    assert not torch.allclose(model.encode_text(before)[0], base[0])
    with pytest.raises(ValueError, match="context_length is 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))


def test_logit_scale_is_clamped_at_100_and_not_decayed():
    model = small()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    skip = model.no_weight_decay()
    assert {"logit_scale", "text.token_embedding.weight", "text.positional_embedding",
            "text.ln_final.weight"} <= skip
    assert "text.transformer.resblocks.0.attn.in_proj_weight" not in skip and "visual_proj.weight" not in skip
    assert "visual.blocks.0.ista.D" in skip  # the CRATE-α tower keeps its official mask


def test_open_clip_text_keys_and_mimetic_init_of_both_towers():
    model = small("vit_tiny_patch4_32")
    keys = {k for k in model.state_dict() if k.startswith("text.")}
    assert {"text.token_embedding.weight", "text.positional_embedding", "text.text_projection", "text.ln_final.weight",
            "text.transformer.resblocks.1.attn.in_proj_weight", "text.transformer.resblocks.1.mlp.c_proj.bias"} <= keys
    assert mimetic_init_(model.text, seed=0) == 2  # nn.MultiheadAttention layers
    assert mimetic_init_(model, seed=0) == 4  # and the ViT tower's two blocks


def test_bidirectional_last_token_variant():
    torch.manual_seed(0)
    from vitlab.models.clip import TextTransformer

    text_tower = TextTransformer(**TEXT, embed_dim=8, causal=False, pool="last", gelu_approximate="tanh",
                                 norm_eps=1e-6).eval()
    text = tokens()
    base = text_tower(text)
    causal = TextTransformer(**TEXT, embed_dim=8, causal=True, pool="last", gelu_approximate="tanh", norm_eps=1e-6)
    causal.load_state_dict(text_tower.state_dict())
    first = text[:, :1]  # one token: attention has nothing to mask, causal or not
    torch.testing.assert_close(causal.eval()(first), text_tower(first))
    assert not torch.allclose(causal(text), base)  # longer inputs: the last token attends both ways only without the mask
    manual = text_tower.ln_final(text_tower.transformer.resblocks[1](text_tower.transformer.resblocks[0](
        text_tower.token_embedding(text) + text_tower.positional_embedding, None), None))[:, -1]
    torch.testing.assert_close(base, manual @ text_tower.text_projection)  # pooled at the last position
    assert text_tower.transformer.resblocks[0].ln_1.eps == 1e-6
    with pytest.raises(ValueError, match="pool must be"):
        TextTransformer(**TEXT, pool="mean")
