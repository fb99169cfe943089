"""FLOP counts against the closed-form multiply-add counts of each architecture, and the profile report."""
import pytest
import torch

import vitlab
from vitlab import count_flops, profile


def analytic_macs(kind: str, d: int, depth: int, patch: int, img: int, classes: int) -> int:
    n = (img // patch) ** 2 + 1  # tokens with the class token
    stem = (n - 1) * 3 * patch * patch * d
    attention_scores = 2 * n * n * d  # q kᵀ and attn · v
    per_token = {"vit": 12 * d * d,  # qkv 3d², proj d², MLP 8d²
                 "crate": 3 * d * d,  # U d², out d², ISTA as one GEMM h (I + K): d² (the patch Linear = conv)
                 "crate_alpha": 18 * d * d}[kind]  # U d², out d², ODL 16d² (crate.md: 16d² MACs per token)
    per_block = d ** 3 if kind == "crate" else 0  # K = η(D − DᵀD): DᵀD once per forward (n = 65 > d / 2 tokens)
    return stem + depth * (n * per_token + attention_scores + per_block) + d * classes


@pytest.mark.parametrize("name, kind", [("vit_tiny_patch4_32", "vit"), ("crate_alpha_tiny_patch4_32", "crate_alpha"),
                                        ("crate_tiny_patch4_32", "crate")])
def test_flops_match_closed_form(name, kind):
    d, depth = 64, 2
    model = vitlab.create_model(name, embed_dim=d, depth=depth, num_heads=2).eval()
    macs = count_flops(model, torch.randn(1, 3, 32, 32)) // 2
    assert macs == analytic_macs(kind, d, depth, 4, 32, 10)


def test_paper_scale_flops():
    with torch.device("meta"):
        vit = vitlab.create_model("vit_base_patch16_224")
        alpha = vitlab.create_model("crate_alpha_base_patch16_224")
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert round(count_flops(vit, x) / 2e9, 1) == 17.6  # ViT-B/16 17.6 GMACs
    assert round(count_flops(alpha, x) / 2e9, 1) == 25.9  # CRATE-α-B/16 ≈ 25.9 GMACs (crate.md)


def test_profile_report():
    report = profile(vitlab.create_model("vit_tiny_patch4_32", depth=1), batch_size=2, warmup=1, iters=1)
    assert report.params == sum(p.numel() for p in vitlab.create_model("vit_tiny_patch4_32", depth=1).parameters())
    assert report.trainable_params == report.params - 65 * 192  # the fixed sin-cos table is not trained
    assert report.train_flops > 2 * report.forward_flops  # backward costs about twice the forward
    assert report.infer_images_per_s > 0 and report.train_images_per_s > 0 and report.peak_memory_bytes > 0
    assert "GMACs" in str(report)
