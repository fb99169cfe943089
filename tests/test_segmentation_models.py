"""Segmentation heads on ViT / CRATE / CRATE-α backbones, layer-wise lr decay."""
import pytest
import torch

import vitlab
from vitlab.models import TransformerBlocks
from vitlab.models.segmentation import SegmentationModel, create_segmentation_model, default_indices
from vitlab.train.optim import build_optimizer, layer_ids, param_groups

FAMILIES = ["vit_tiny_patch4_32", "crate_tiny_patch4_32", "crate_alpha_tiny_patch4_32"]


def small(name: str, head: str, depth: int = 4, **head_kwargs) -> SegmentationModel:
    torch.manual_seed(0)
    return create_segmentation_model(name, 7, head, head_kwargs=dict(channels=16, **head_kwargs) if head ==
                                     "upernet" else head_kwargs, embed_dim=32, depth=depth, num_heads=2, img_size=32)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("head", ["linear", "upernet"])
def test_heads_give_full_resolution_logits_and_train(name, head):
    model = small(name, head)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7, 32, 32) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 7, (2, 32, 32))).backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.parameters().__next__().grad.abs().sum() > 0  # gradients reach the stem
    assert isinstance(model, TransformerBlocks) and model.get_blocks() is model.backbone.blocks
    assert model.backbone.num_classes == 0  # the classifier is pruned
    model.eval()
    odd = torch.randn(1, 3, 30, 42)  # not a patch multiple: padded, logits cropped back
    assert model(odd).shape == (1, 7, 30, 42)


def test_upernet_reads_four_blocks_as_a_pyramid():
    assert default_indices("upernet", 12) == [3, 5, 7, 11] and default_indices("linear", 12) == [11]
    assert default_indices("upernet", 24) == [5, 11, 17, 23]
    model = small("vit_tiny_patch4_32", "upernet", depth=8).eval()
    assert model.indices == [1, 3, 5, 7]
    shapes = [tuple(f.shape) for f in model.forward_features(torch.randn(1, 3, 32, 32))]
    assert shapes == [(1, 32, 32, 32), (1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4)]  # ×4, ×2, ×1, ×½ of 8 × 8
    with pytest.raises(ValueError, match="reads 4 blocks"):
        small("vit_tiny_patch4_32", "upernet", indices=[1, 2])
    with pytest.raises(ValueError, match="head must be one of"):
        small("vit_tiny_patch4_32", "fcn")


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = small("crate_alpha_tiny_patch4_32", "upernet")
        model.set_grad_checkpointing(checkpointing)
        model(torch.ones(2, 3, 32, 32)).square().mean().backward()
        grads.append(model.backbone.blocks[0].attn.subspace.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_weight_decay_mask_keeps_the_backbone_recipe():
    model = small("crate_alpha_tiny_patch4_32", "upernet")
    skip = model.no_weight_decay()
    assert "backbone.blocks.0.ista.D" in skip and "backbone.blocks.0.attn.subspace.weight" not in skip
    assert "head.classifier.bias" in skip and "head.classifier.weight" not in skip
    assert "neck.up4.1.weight" in skip  # BatchNorm weight


def test_layer_decay_scales_each_block():
    model = small("vit_tiny_patch4_32", "linear", depth=3)
    ids = layer_ids(model)
    assert ids["backbone.pos_embed"] == ids["backbone.patch_embed.proj.weight"] == 0
    assert ids["backbone.blocks.0.attn.qkv.weight"] == 1 and ids["backbone.blocks.2.mlp.fc2.bias"] == 3
    assert ids["backbone.norm.weight"] == ids["head.classifier.weight"] == 4
    optimizer = build_optimizer(model, "adamw", 1.0, 0.05, (0.9, 0.999), layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["backbone.patch_embed.proj.weight"])] == 0.5 ** 4
    assert lr_of[id(params["backbone.blocks.1.attn.qkv.weight"])] == 0.5 ** 2
    assert lr_of[id(params["head.classifier.weight"])] == 1.0
    plain = param_groups(model, 0.05)
    assert len(plain) == 2 and all("lr" not in g for g in plain)  # off: the two groups as before
    classifier = vitlab.create_model("crate_tiny_patch4_32", depth=2)  # works on a classifier too
    assert layer_ids(classifier)["head.weight"] == 3 and layer_ids(classifier)["cls_token"] == 0


def test_batchnorm_becomes_syncbatchnorm_on_cuda_only():
    from vitlab.train.distributed import sync_batchnorm

    model = small("vit_tiny_patch4_32", "upernet")
    weight = model.head.fuse[1].weight
    assert sync_batchnorm(model, torch.device("cpu")) is model and type(model.head.fuse[1]) is torch.nn.BatchNorm2d
    converted = sync_batchnorm(model, torch.device("cuda"))  # conversion only; running it needs CUDA
    assert type(converted.head.fuse[1]) is torch.nn.SyncBatchNorm and converted.head.fuse[1].weight is weight
    assert converted is model  # children replaced in place: the optimiser's parameters stay the model's
