"""benchmarks/train_step.py and benchmarks/gpu_check.sh on the CPU at tiny sizes: the GPU check's dry run, so that
what runs on a lent GPU machine has run here first."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitlab

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "gpu_tests", "train_step", "decode_throughput", "fashion_recipe", "grad_checkpointing",
         "sliding_window", "train_step_compile"]


def _train_step_module():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", ROOT / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_reports_rate_mfu_and_memory_from_counted_flops():
    bench = _train_step_module()
    args = bench.parse_args(["--tiny", "--device", "cpu", "--models", "vitlab_vit", "vitlab_crate_alpha",
                             "--steps", "1", "--warmup", "1", "--repeats", "2", "--peak-tflops", "1"])
    report = bench.run(args)
    assert report["interrupted"] is None and report["batch_size"] == 8
    for name, arch in [("vitlab_vit", "vit_base_patch16_224"), ("vitlab_crate_alpha", "crate_alpha_base_patch16_224")]:
        result = report["models"][name]
        assert result["status"] == "ok" and result["dtype"] == "fp32", result
        assert len(result["images_per_s_windows"]) == 2 and result["images_per_s"] > 0
        model = vitlab.create_model(arch, **bench.TINY_KWARGS)
        assert result["params"] == sum(p.numel() for p in model.parameters())
        assert result["train_flops_per_image"] == vitlab.count_flops(model, torch.randn(1, 3, 32, 32), backward=True)
        expected_mfu = result["images_per_s"] * result["train_flops_per_image"] / 1e12
        assert result["mfu"] == pytest.approx(expected_mfu, rel=1e-2, abs=1e-4)
        assert result["peak_memory_mib"] > 0


def test_train_step_grad_checkpointing_is_applied_where_the_model_has_it():
    bench = _train_step_module()
    args = bench.parse_args(["--tiny", "--device", "cpu", "--models", "vitlab_vit", "--steps", "1", "--warmup", "0",
                             "--repeats", "1", "--grad-checkpointing"])
    report = bench.run(args)
    assert report["models"]["vitlab_vit"]["status"] == "ok"
    assert report["models"]["vitlab_vit"]["grad_checkpointing"] is True


def _gpu_check(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    full_env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "GPU_CHECK_SCRATCH": str(tmp_path / "scratch"),
                "PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "gpu_check.json").read_text())
    return proc, summary


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_gpu_check_dry_run_records_every_step(tmp_path):
    proc, summary = _gpu_check(tmp_path, GPU_CHECK_STEPS="environment train_step")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["complete"] and summary["mode"] == "dry_run"
    steps = {step["name"]: step for step in summary["steps"]}
    assert [step["name"] for step in summary["steps"]] == STEPS
    assert steps["environment"]["status"] == "ok" and steps["environment"]["exit_code"] == 0
    assert summary["environment"]["torch"] == torch.__version__ and summary["environment"]["packages"]["vitlab"]
    train = steps["train_step"]
    assert train["status"] == "ok" and train["wall_s"] > 0 and train["files"] == ["train_step.json"]
    assert "--tiny" in train["command"] and "--device cpu" in train["command"]
    assert train["result"]["models"]["vitlab_vit"]["images_per_s"] > 0
    full = json.loads((tmp_path / "out" / "train_step.json").read_text())
    assert set(full["models"]) == {"vitlab_vit", "vitlab_crate_alpha", "timm_vit"}
    for name in set(STEPS) - {"environment", "train_step"}:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"], steps[name]
    assert summary["status_counts"] == {"ok": 2, "failed": 0, "timeout": 0, "skipped": 6}
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what the device tool brings back


def test_gpu_check_summary_is_valid_when_the_budget_runs_out(tmp_path):
    proc, summary = _gpu_check(tmp_path, GPU_CHECK_STEPS="environment", GPU_CHECK_BUDGET_S="5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env_step = summary["steps"][0]
    assert env_step["name"] == "environment" and env_step["status"] == "skipped"
    assert env_step["reason"].startswith("budget exhausted")
    assert summary["complete"] and summary["environment"] is None
