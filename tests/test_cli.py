"""The `vitlab` command line."""
import subprocess
import sys

from vitlab.cli import main


def test_models_lists_matches_with_aliases_and_weights(capsys):
    assert main(["models", "crate_alpha_base*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and any("crate_alpha_b16" in line and "crate_alpha_B16.pth" in line for line in out)
    assert main(["models", "no_such_*"]) == 1
    assert main(["models"]) == 0  # every registered model describes itself (image, language and CLIP models)
    listing = capsys.readouterr().out
    assert "crate_alpha_clipa_l14" in listing and "CLIP, input 224px, 32 text tokens" in listing


def test_profile_prints_params_flops_and_throughput(capsys):
    assert main(["profile", "vit_tiny_patch4_32", "--no-train", "--iters", "1", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "5.363M params" in out and "GMACs" in out and "img/s" in out


def test_unknown_model_is_an_error_with_suggestions(capsys):
    assert main(["profile", "crate_alpha_b61"]) == 2
    assert "unknown model 'crate_alpha_b61'" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "vitlab", "models", "vit_tiny*"], capture_output=True, text=True)
    assert result.returncode == 0 and "vit_tiny_patch2_32" in result.stdout
