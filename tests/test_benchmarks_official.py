"""benchmarks/vs_official_crate.py without the official checkouts: its import from a path, weight copy, equality check,
tables and JSON run against stand-in "official" files that this test writes into tmp_path.

The stand-ins are written here from the equations of ../shared/design/crate.md and the key layouts of
official_layouts.md §1-2 (names of the official classes and constructors, the same state_dict keys, the same math);
they share no code with the official repositories. A stand-in whose ISTA threshold differs must fail the check.
"""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Ma-Lab-Berkeley/CRATE model/crate.py as official_layouts.md §1 describes it; LAMBDA is the ISTA threshold λ.
CRATE_STAND_IN = '''
import torch
import torch.nn.functional as F
from torch import nn


class Patches(nn.Module):
    """(b, c, H, W) -> (b, patches row-major, p1 p2 c) with the channel fastest; no parameters (index 0)."""
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, img):
        b, c, h, w = img.shape
        p = self.p
        grid = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return grid.reshape(b, (h // p) * (w // p), p * p * c)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """One ISTA step against a square dictionary: ReLU(u + eta (u W - u W^T W) - eta lambda), row vectors."""
    def __init__(self, dim, hidden_dim, dropout=0.0, step_size=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)
        self.step_size = step_size
        self.lambd = LAMBDA

    def forward(self, u):
        W, eta = self.weight, self.step_size
        return F.relu(u + eta * (u @ W - (u @ W.t()) @ W) - eta * self.lambd)


class Attention(nn.Module):
    """MSSA: one bias-free projection w = U u as query, key and value; heads merged; output Linear with bias."""
    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.qkv = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, u):
        b, n, _ = u.shape
        w = self.qkv(u).reshape(b, n, self.heads, -1).transpose(1, 2)
        attn = torch.softmax(w @ w.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out((attn @ w).transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, dropout=0.0, ista=0.1):
        super().__init__()
        self.dim, self.depth, self.heads = dim, depth, heads
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                           PreNorm(dim, FeedForward(dim, dim, dropout, step_size=ista))]) for _ in range(depth))

    def forward(self, x):
        for mssa, ista in self.layers:
            x = ista(x + mssa(x))
        return x


class CRATE(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, pool="cls", channels=3,
                 dim_head=64, dropout=0.0, emb_dropout=0.0, ista=0.1):
        super().__init__()
        n = (image_size // patch_size) ** 2
        patch_dim = channels * patch_size * patch_size
        self.to_patch_embedding = nn.Sequential(Patches(patch_size), nn.LayerNorm(patch_dim),
                                                nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = Transformer(dim, depth, heads, dim_head, dropout, ista)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        x = self.to_patch_embedding(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.mlp_head(self.transformer(x)[:, 0])


def CRATE_tiny(num_classes=1000):
    return CRATE(image_size=224, patch_size=16, num_classes=num_classes, dim=384, depth=12, heads=6, dim_head=64)
'''

# UCSC-VLAA/CRATE-alpha torch_inference/model/crate_alpha.py as official_layouts.md §2 describes it.
CRATE_ALPHA_STAND_IN = '''
import torch
import torch.nn.functional as F
from torch import nn


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class OvercompleteISTABlock(nn.Module):
    """Two ISTA steps from zero against D (d, 4d), decoded by D1 (d, 4d)."""
    def __init__(self, d, overcomplete_ratio=4, eta=0.1, lmbda=0.1):
        super().__init__()
        self.eta, self.lmbda, self.d = eta, lmbda, d
        self.D = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d, overcomplete_ratio * d)))
        self.D1 = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d, overcomplete_ratio * d)))

    def forward(self, u):
        eta, lam = self.eta, self.lmbda
        z1 = F.relu(eta * (u @ self.D) - eta * lam)
        residual = z1 @ self.D.t() - u
        z2 = F.relu(z1 - eta * (residual @ self.D) - eta * lam)
        return z2 @ self.D1.t()


class Attention(nn.Module):
    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.qkv = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout))

    def forward(self, u):
        b, n, _ = u.shape
        w = self.qkv(u).reshape(b, n, self.heads, -1).transpose(1, 2)
        attn = torch.softmax(w @ w.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out((attn @ w).transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, dropout=0.0):
        super().__init__()
        self.dim, self.depth, self.heads = dim, depth, heads
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                           PreNorm(dim, OvercompleteISTABlock(dim))]) for _ in range(depth))

    def forward(self, x):
        for mssa, odl in self.layers:
            x = x + mssa(x)
            x = x + odl(x)
        return x


class CRATE(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, channels=3, dim_head=64,
                 dropout=0.0, emb_dropout=0.0):
        super().__init__()
        n = (image_size // patch_size) ** 2
        self.conv1 = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = Transformer(dim, depth, heads, dim_head, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        x = self.conv1(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.mlp_head(self.transformer(x)[:, 0])
'''

QUICK = ["--depth", "1", "--img-size", "16", "--batch", "4", "--check-batch", "2", "--windows", "2", "--steps", "1",
         "--threads", "1"]


def _bench():
    spec = importlib.util.spec_from_file_location("vs_official_crate", ROOT / "benchmarks" / "vs_official_crate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkouts(tmp_path: Path, lambd: str = "0.1") -> tuple[Path, Path]:
    crate = tmp_path / "CRATE"
    (crate / "model").mkdir(parents=True)
    (crate / "model" / "crate.py").write_text(CRATE_STAND_IN.replace("LAMBDA", lambd))
    alpha = tmp_path / "CRATE-alpha"
    (alpha / "torch_inference" / "model").mkdir(parents=True)
    (alpha / "torch_inference" / "model" / "crate_alpha.py").write_text(CRATE_ALPHA_STAND_IN)
    return crate, alpha


def test_same_model_passes_the_check_and_reports_speed_and_memory(tmp_path, capsys):
    crate, alpha = _checkouts(tmp_path)
    out = tmp_path / "out.json"
    rc = _bench().main(["--official-crate", str(crate), "--official-crate-alpha", str(alpha / "torch_inference" /
                        "model" / "crate_alpha.py"), *QUICK, "--memory-steps", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["torch"] and report["command"].startswith(
        "python benchmarks/vs_official_crate.py --official-crate ")
    crate_result, alpha_result = report["results"]
    assert crate_result["family"] == "crate" and alpha_result["family"] == "crate_alpha"
    assert crate_result["official_tiny"] == {"name": "CRATE_tiny", "width": 384, "depth": 12, "heads": 6}
    assert (crate_result["width"], crate_result["heads"], alpha_result["width"], alpha_result["heads"]) == (384, 6,
                                                                                                          192, 3)
    for result in (crate_result, alpha_result):
        assert result["params"] == result["official_params"]
        assert [c["dtype"] for c in result["check"]] == ["fp32", "fp64"] and all(c["same"] for c in result["check"])
        assert result["check"][1]["max_abs_logit_diff"] < 1e-12 and result["check"][1]["max_rel_grad_diff"] < 1e-10
        assert all(len(v) == 2 and min(v) > 0 for v in result["images_per_s_windows"].values())
        rates = result["images_per_s"]
        assert result["ratio"] == rates["vitlab"] / rates["official"]
        for code in ("official", "vitlab"):
            memory = result["memory"][code]
            assert memory["peak_rss_mib"] > memory["step_peak_mib"] >= 0
    assert "| CRATE | fp32 |" in printed and "| CRATE-α | crate_alpha_tiny_patch4_32 | vitlab |" in printed
    assert report["table"] in printed


def test_different_math_fails_the_check(tmp_path, capsys):
    crate, _ = _checkouts(tmp_path, lambd="0.2")  # the stand-in's ISTA threshold λ is not vitlab's 0.1
    rc = _bench().main(["--official-crate", str(crate), *QUICK, "--no-memory"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "| CRATE | fp32 |" in captured.out and "| NO |" in captured.out
    assert "differ beyond the tolerance: CRATE fp32, CRATE fp64" in captured.err
