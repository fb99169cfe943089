"""Runs on clusters and laptops: checkpoints between evaluations, SIGTERM / SIGUSR1, resume=false, extending a run,
the start-up summary and first lines, Weights & Biases as an optional dependency, the default worker count."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vitlab.train.build as build
import vitlab.train.loop as loop
from vitlab.data.loader import default_num_workers
from vitlab.train import train
from vitlab.train.loop import EXIT_INTERRUPTED

from test_train import FASHION, needs_fashion, read_metrics, tiny_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
TINY = ["fashion_mnist_vit", "model_kwargs.patch_size=8", "model_kwargs.embed_dim=32", "model_kwargs.depth=2",
        "model_kwargs.num_heads=2", "train_subset=2048", "eval_subset=256", "batch_size=32", "log_every=4",
        f"data_dir={FASHION}", "progress=false", "device=cpu"]


def meta_step(run_dir: Path) -> int:
    return json.loads((run_dir / "last" / "meta.json").read_text())["step"]


@needs_fashion
def test_a_killed_run_resumes_from_the_periodic_checkpoint_and_ends_identical(tmp_path, monkeypatch, capsys):
    straight = train(tiny_run(tmp_path, "straight", eval_every=1))  # evaluations (and checkpoints) at 32, 64 only
    out = capsys.readouterr().out
    assert "step 1: first step done in" in out  # a line within seconds, long before log_every
    evaluation_lines = [line for line in out.splitlines() if "top1" in line]
    assert evaluation_lines and all("train_loss" in line and "eval_loss" in line for line in evaluation_lines)

    honest, calls = loop._Run._optimizer_step, {"n": 0}

    def dies_at_step_23(self, micro_batches):  # the process is killed during step 23 (no handler runs)
        calls["n"] += 1
        if calls["n"] == 23:
            raise KeyboardInterrupt("killed")
        return honest(self, micro_batches)

    monkeypatch.setattr(loop._Run, "_optimizer_step", dies_at_step_23)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run(tmp_path, "killed", eval_every=1, checkpoint_every_steps=5))
    assert meta_step(tmp_path / "killed") == 20  # the last periodic checkpoint, not 0 (no evaluation had run)
    assert not (tmp_path / "killed" / "best").exists()  # periodic checkpoints never write best/
    monkeypatch.setattr(loop._Run, "_optimizer_step", honest)
    capsys.readouterr()
    resumed = train(tiny_run(tmp_path, "killed", eval_every=1, checkpoint_every_steps=5))
    assert "resumed at step 20" in capsys.readouterr().out
    assert resumed["step"] == straight["step"] == 64
    assert resumed["top1"] == straight["top1"] and resumed["eval_loss"] == straight["eval_loss"]
    a = {(r["step"], "top1" in r): r for r in read_metrics(tmp_path / "straight")}
    b = {(r["step"], "top1" in r): r for r in read_metrics(tmp_path / "killed")}
    after = [k for k in a if k[0] >= 32]  # the step-24 window averages 17..24 in one run, 21..24 in the other
    assert len(after) == 7  # train losses at 32, 40, 48, 56, 64; evaluations at 32, 64
    for key in after:  # windows wholly after the resume: bit-identical
        assert a[key].get("train_loss") == b[key].get("train_loss") and a[key].get("top1") == b[key].get("top1")


@needs_fashion
def test_sigterm_checkpoints_at_the_step_and_the_run_resumes_there(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "vitlab", "train", *TINY, "epochs=50", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    seen = []
    for line in proc.stdout:  # wait until training runs, then stop it as a scheduler would
        seen.append(line)
        if line.startswith("step 8 "):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    text = "".join(seen) + rest
    assert "received SIGTERM" in err and "Traceback" not in err
    stopped = int(text.split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert stopped >= 8 and meta_step(out) == stopped
    assert f"run the same command again to resume at step {stopped}" in text
    again = subprocess.run([*args, f"max_steps={stopped + 3}"], capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed at step {stopped}" in again.stdout and f"step {stopped + 1}: first step done" in again.stdout
    assert meta_step(out) == stopped + 3
    steps = [r["step"] for r in read_metrics(out) if "train_loss" in r]
    assert steps == sorted(set(steps))  # one record per step, none logged twice


@needs_fashion
def test_sigusr1_on_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vitlab",
            "train", *TINY, "epochs=50", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith("step 8 "):
            break
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    rank1 = [p for p in workers if b"RANK=1" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGUSR1)  # only rank 1 is told; rank 0 must learn it at the step boundary
    rest, err = proc.communicate(timeout=180)
    assert "stopped by a signal on another rank after step" in rest, (rest[-2000:], err[-3000:])
    stopped = int(rest.split("after step ")[1].split(":")[0])
    assert meta_step(out) == stopped
    assert proc.returncode != 0 and "exitcode  : 75" in err  # torchrun reports the workers' status 75


@needs_fashion
def test_resume_false_moves_the_previous_run_aside(tmp_path, capsys):
    train(tiny_run(tmp_path, max_steps=4))
    first = read_metrics(tmp_path / "run")
    capsys.readouterr()
    train(tiny_run(tmp_path, max_steps=2, resume=False))
    out = capsys.readouterr().out
    assert "resume=false: moved the previous run" in out and "nothing was deleted" in out and "new run" in out
    previous = sorted((tmp_path / "run").glob("previous-*"))
    assert len(previous) == 1 and meta_step(previous[0]) == 4
    assert read_metrics(previous[0]) == first
    assert meta_step(tmp_path / "run") == 2 and max(r["step"] for r in read_metrics(tmp_path / "run")) == 2


@needs_fashion
def test_a_finished_run_is_extended_with_more_epochs_and_says_the_schedule_changed(tmp_path, capsys):
    done = train(tiny_run(tmp_path, epochs=1))
    assert done["step"] == 32
    capsys.readouterr()
    longer = train(tiny_run(tmp_path, epochs=2))
    out = capsys.readouterr().out
    assert longer["step"] == 64 and "resumed at step 32" in out
    assert "schedule changed on resume: 32 → 64 steps" in out and "learning rate moves from 0 to" in out
    with pytest.raises(ValueError, match="fewer than already trained"):
        train(tiny_run(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr: 0.002 → 0.1"):  # other keys are still checked
        train(tiny_run(tmp_path, epochs=3, lr=0.1))


@needs_fashion
def test_wandb_is_optional(tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(RuntimeError, match="pip install wandb"):
            train(tiny_run(tmp_path, max_steps=2, wandb=True))
        assert not (tmp_path / "run").exists()  # refused before anything was made
        return
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(tiny_run(tmp_path, max_steps=2, wandb=True, wandb_project="vitlab-test"))
    assert (tmp_path / "run" / "wandb_id").is_file() and list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_default_num_workers_shares_the_cpus_among_local_processes(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_num_workers() == max(1, min(8, cpus))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus * 4))
    assert default_num_workers() == 1


def test_periodic_checkpoint_keys_are_checked():
    from vitlab.train import OverrideError, TrainConfig, apply_overrides

    config = apply_overrides(TrainConfig(), ["checkpoint_every_steps=100", "checkpoint_every_minutes=0",
                                             "resume=false", "wandb=false"])
    assert config.checkpoint_every_steps == 100 and config.checkpoint_every_minutes == 0 and config.resume is False
    with pytest.raises(OverrideError, match="checkpoint_every_minutes"):
        apply_overrides(TrainConfig(), ["checkpoint_every_minutes=-1"])
    with pytest.raises(OverrideError, match="checkpoint_every_steps"):
        apply_overrides(TrainConfig(), ["checkpoint_every_steps=-5"])


def test_the_start_up_summary_states_the_decode_size_of_encoded_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from vitlab.train import TrainConfig

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "images" / split / name / f"{i}.png")
    config = TrainConfig(dataset="imagefolder", data_dir=str(tmp_path / "images"), eval_split="val", batch_size=4,
                         model_kwargs=dict(patch_size=16, embed_dim=32, depth=1, num_heads=2), epochs=1,
                         num_workers=0, progress=False, device="cpu", out_dir=str(tmp_path / "run"))
    train(config)
    out = capsys.readouterr().out
    assert "IMAGES ARE DECODED AT 224 x 224 px (image_size not set" in out
    assert ("model: vit_tiny_patch4_32(num_classes=2, img_size=224, patch_size=16, embed_dim=32, "
            "depth=1, num_heads=2)") in out and "input per sample (3, 224, 224)" in out  # the architecture as built
    assert "batch: 4 global = 1 process(es) x 1 accumulation step(s) x 4 per device" in out
    assert "8 train / 8 eval images" in out and "step 1: first step done" in out


def test_cpu_bf16_flags_read_the_cpus_matrix_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    assert build.cpu_bf16_flags(str(cpuinfo)) == ["amx_bf16", "avx512_bf16"]
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")  # Arm (e.g. Graviton 3)
    assert build.cpu_bf16_flags(str(cpuinfo)) == ["bf16"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 fma\n")
    assert build.cpu_bf16_flags(str(cpuinfo)) == []
    assert build.cpu_bf16_flags(str(tmp_path / "missing")) == []


@needs_fashion
def test_bf16_on_a_cpu_without_bf16_units_is_called_out_at_start_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": [])
    train(tiny_run(tmp_path, precision="bf16", max_steps=1, device="cpu"))
    assert "precision=bf16 on a CPU without bf16 matrix instructions" in capsys.readouterr().out
    monkeypatch.setattr(build, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": ["amx_bf16"])
    train(tiny_run(tmp_path, "run2", precision="bf16", max_steps=1, device="cpu"))
    assert "without bf16 matrix instructions" not in capsys.readouterr().out


@needs_fashion
def test_the_start_up_line_says_what_auto_measured_at_the_models_shape(tmp_path, monkeypatch, capsys):
    import vitlab._calibrate as calibration
    monkeypatch.setenv("VITLAB_CALIBRATE", "1")
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "measure", lambda candidates, **kwargs: {"fp32": 2.5, "bf16": 1.0})
    train(tiny_run(tmp_path, precision="auto", max_steps=1, device="cpu"))
    # the model itself, at its width 32, 4 x 4 patches + the class token = 17 tokens, and the batch of 64
    assert (f"precision: bf16 autocast (auto: 2.50x fp32 measured on {calibration.cpu_name()}, VisionTransformer "
            f"w32-t32 b64; cached in {tmp_path / 'cache' / 'calibration.json'})") in capsys.readouterr().out


def test_precision_auto_is_bf16_on_cuda_and_where_measured_faster_on_a_cpu(monkeypatch, tmp_path):
    import torch
    import vitlab._calibrate as calibration
    cpu = torch.device("cpu")
    # VITLAB_CALIBRATE=0 (the suite's default, tests/conftest.py): the flag rule, bf16 only with AMX tiles
    monkeypatch.setattr(build, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": ["amx_bf16", "avx512_bf16"])
    assert build.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(build, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": ["avx512_bf16"])
    assert build.resolve_precision("auto", cpu) == "fp32"
    # measured: an avx512_bf16 CPU (no AMX) whose bf16 steps run 2.5x faster trains in bf16; one 10x slower in fp32
    monkeypatch.setenv("VITLAB_CALIBRATE", "1")
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "fast"))
    monkeypatch.setattr(calibration, "measure", lambda candidates, **kwargs: {"fp32": 2.5, "bf16": 1.0})
    assert build.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "emulated"))
    monkeypatch.setattr(calibration, "measure", lambda candidates, **kwargs: {"fp32": 1.0, "bf16": 10.0})
    assert build.resolve_precision("auto", cpu) == "fp32"
    assert build.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert build.resolve_precision("bf16", cpu) == "bf16"
    assert build.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="'auto', 'bf16' or 'fp32'"):
        build.resolve_precision("fp16", torch.device("cpu"))
