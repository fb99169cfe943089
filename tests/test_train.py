"""The training engine on the real Fashion-MNIST: smoke accuracy, exact resume, NaN guard, DDP equivalence, CLI."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.models.adapt import adapt_state_dict, resize_position_grid
from vitlab.train import OverrideError, TrainConfig, TrainingDiverged, apply_overrides, get_preset, train
from vitlab.train.optim import lr_factor, param_groups

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="../shared/data/fashion-mnist not present")


def tiny_run(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    """A few-second Fashion-MNIST run: ViT width 32, depth 2, 2 k training images."""
    config = get_preset("fashion_mnist_vit")
    items = dict(model_kwargs=dict(patch_size=7, embed_dim=32, depth=2, num_heads=2), train_subset=2048,
                 eval_subset=512, batch_size=64, epochs=2, eval_every=0.5, log_every=8, data_dir=str(FASHION),
                 out_dir=str(tmp_path / name), progress=False)
    items.update(overrides)
    for key, value in items.items():
        setattr(config, key, value)
    return config


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
def test_overrides_are_typed_and_unknown_keys_list_the_valid_ones():
    config = apply_overrides(TrainConfig(), ["lr=0.01", "epochs=3", "compile=true", "betas=(0.9, 0.95)",
                                             "augment.randaugment_n=2", "model_kwargs.depth=6", "init=mimetic",
                                             "checkpoint=none", "init_kwargs.alpha_qk=0.5"])
    assert config.lr == 0.01 and config.epochs == 3.0 and config.compile is True and config.betas == (0.9, 0.95)
    assert config.augment.randaugment_n == 2 and config.model_kwargs == {"depth": 6}
    assert config.init == "mimetic" and config.checkpoint is None and config.init_kwargs == {"alpha_qk": 0.5}
    with pytest.raises(OverrideError, match="unknown key 'learning_rate'.*lr"):
        apply_overrides(TrainConfig(), ["learning_rate=1"])
    with pytest.raises(OverrideError, match="batch_size='big': expected int"):
        apply_overrides(TrainConfig(), ["batch_size=big"])
    with pytest.raises(OverrideError, match="augment keys"):
        apply_overrides(TrainConfig(), ["augment.nope=1"])
    with pytest.raises(OverrideError, match="key=value"):
        apply_overrides(TrainConfig(), ["lr"])
    assert TrainConfig().augment is not apply_overrides(TrainConfig(), []).augment  # presets are never mutated


def test_schedules():
    assert lr_factor(0, 100, 0, "piecewise") == 0.0
    assert lr_factor(40, 100, 0, "piecewise") == pytest.approx(1.0)
    assert lr_factor(80, 100, 0, "piecewise") == pytest.approx(0.05)
    assert lr_factor(100, 100, 0, "piecewise") == pytest.approx(0.0)
    assert lr_factor(4, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine", min_ratio=0.01) == pytest.approx(0.01)


def test_weight_decay_groups_follow_the_official_masks():
    model = vitlab.create_model("crate_alpha_tiny_patch4_32", depth=2)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 6  # stem, head, 2 × (U, out)
    crate = vitlab.create_model("crate_tiny_patch4_32", depth=2)
    assert len(param_groups(crate, 0.5)[1]["params"]) == 0  # official CRATE decays everything


def test_patch_size_adaptation():
    pre = vitlab.create_model("crate_alpha_base_patch32_224", embed_dim=32, depth=1, num_heads=2, img_size=64)
    fine = vitlab.create_model("crate_alpha_base_patch16_224", embed_dim=32, depth=1, num_heads=2, img_size=64)
    adapted = adapt_state_dict(pre.state_dict(), fine)
    assert adapted["patch_embed.proj.weight"].shape == (32, 3, 16, 16) and adapted["pos_embed"].shape == (1, 17, 32)
    torch.testing.assert_close(adapted["pos_embed"][:, 0], pre.pos_embed[:, 0])  # class slot kept
    vitlab.load_checkpoint(fine, pre.state_dict(), adapt=True)
    same = resize_position_grid(pre.pos_embed, 4)
    assert same is pre.pos_embed
    with pytest.raises(vitlab.CheckpointMismatchError, match="pos_embed"):
        vitlab.load_checkpoint(fine, pre.state_dict())


# ----------------------------------------------------------------------------------------------------------------
@needs_fashion
def test_fashion_mnist_smoke_run_beats_chance_by_far(tmp_path):
    config = tiny_run(tmp_path, train_subset=0, eval_subset=2000, batch_size=64, epochs=300 * 64 / 60000,
                      eval_every=100, log_every=100, lr=3e-3, warmup_epochs=0.05)
    result = train(config)
    assert result["step"] == 300
    assert result["top1"] > 60.0  # chance is 10%
    records = read_metrics(config.out_dir)
    assert records[0]["train_loss"] > records[-2]["train_loss"]  # it learned


@needs_fashion
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    straight = train(tiny_run(tmp_path, "straight"))
    first = train(tiny_run(tmp_path, "resumed", max_steps=21))  # stops mid-epoch 0 (32 steps per epoch)
    assert first["step"] == 21 and (tmp_path / "resumed" / "last" / "model.safetensors").is_file()
    second = train(tiny_run(tmp_path, "resumed"))
    assert second["step"] == straight["step"] == 64
    a = {(r["step"], "top1" in r): r for r in read_metrics(tmp_path / "straight")}
    b = {(r["step"], "top1" in r): r for r in read_metrics(tmp_path / "resumed")}
    # every record whose window lies wholly after the interruption (the step-24 train loss averages 17..24 in one
    # run and 22..24 in the other) is bit-identical
    after = [k for k in a if k[0] >= 32]
    assert len(after) == 8  # train losses at 32, 40, 48, 56, 64; evaluations at 32, 48, 64
    for key in after:
        metric = "top1" if key[1] else "train_loss"
        assert a[key][metric] == b[key][metric] and a[key].get("eval_loss") == b[key].get("eval_loss")
    assert second["top1"] == straight["top1"] and second["eval_loss"] == straight["eval_loss"]


@needs_fashion
def test_nan_guard_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import vitlab.train.tasks.classification as data

    calls = {"n": 0}
    honest = data.soft_cross_entropy

    def poisoned(logits, targets):  # the loss turns NaN from the 12th optimiser step on
        calls["n"] += 1
        loss = honest(logits, targets)
        return loss * float("nan") if calls["n"] >= 12 else loss

    monkeypatch.setattr(data, "soft_cross_entropy", poisoned)
    config = tiny_run(tmp_path, eval_every=0.25)  # checkpoint at step 8, log every 8 steps
    with pytest.raises(TrainingDiverged, match=r"NaN/inf within steps 9\.\.16"):
        train(config)
    meta = json.loads((tmp_path / "run" / "last" / "meta.json").read_text())
    assert meta["step"] == 8  # the good checkpoint is kept, nothing diverged was written


@needs_fashion
def test_real_divergence_is_caught(tmp_path):
    with pytest.raises(TrainingDiverged, match="Lower lr"):
        train(tiny_run(tmp_path, lr=1e8, optimizer="adamw", grad_clip=0.0, log_every=2, warmup_epochs=0))


@needs_fashion
def test_resuming_under_another_config_is_refused(tmp_path):
    train(tiny_run(tmp_path, max_steps=8))
    with pytest.raises(ValueError, match="lr: 0.002 → 0.1"):
        train(tiny_run(tmp_path, lr=0.1))


@needs_fashion
def test_cli_train_and_eval_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "vitlab", "train", "fashion_mnist_vit_mimetic", "model_kwargs.patch_size=8",
            "model_kwargs.depth=2", "model_kwargs.embed_dim=32", "model_kwargs.num_heads=2", "train_subset=1024",
            "eval_subset=256", "epochs=1", f"data_dir={FASHION}", f"out_dir={out}", "progress=false"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test accuracy:" in done.stdout
    top1 = float(done.stdout.split("test accuracy: ")[1].split("%")[0])
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "fashion_mnist_vit_mimetic" and saved["config"]["init"] == "mimetic"
    assert saved["torch"] == torch.__version__ and "git_commit" in saved
    images = str(FASHION / "train-images-idx3-ubyte.gz")
    sha = "sha256 b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"  # ../shared/data/SOURCES.md
    assert [images, sha] in saved["data_files"] and f"data: {images} ({sha})" in done.stdout  # the files read
    evaluated = subprocess.run([sys.executable, "-m", "vitlab", "eval", str(out), f"data_dir={FASHION}"],
                               capture_output=True, text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"top-1 {top1:.2f}%" in evaluated.stdout  # the best checkpoint is the only (final) evaluation
    bad = subprocess.run([sys.executable, "-m", "vitlab", "train", "fashion_mnist_vit", "learning_rate=1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown key 'learning_rate'" in bad.stderr and "lr" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "vitlab", "presets"], capture_output=True, text=True, env=env)
    assert "cifar10_vit_tiny_mimetic" in listed.stdout and "crate_alpha_in1k_finetune" in listed.stdout


@needs_fashion
def test_ddp_and_fsdp_two_processes_match_one_process(tmp_path):
    # A patch projection, not the preset's convolutional stem: its BatchNorm sees each rank's half batch.
    common = ["fashion_mnist_vit", "model_kwargs.patch_size=7", "model_kwargs.patch_embed=conv", "model_kwargs.depth=2",
              "model_kwargs.embed_dim=32", "model_kwargs.num_heads=2", "train_subset=1024", "eval_subset=256",
              "batch_size=64", "epochs=1",
              "log_every=2", "augment.random_crop_padding=0", "augment.hflip=false", f"data_dir={FASHION}",
              "progress=false", "device=cpu", "precision=fp32"]  # fp32: bf16 (auto on AMX CPUs) rounds per split
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    one = subprocess.run([sys.executable, "-m", "vitlab", "train", *common, f"out_dir={tmp_path / 'one'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    losses_one = [r["train_loss"] for r in read_metrics(tmp_path / "one") if "train_loss" in r]
    top1_one = [r["top1"] for r in read_metrics(tmp_path / "one") if "top1" in r]
    assert len(losses_one) == 8
    for strategy in ("ddp", "fsdp"):
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vitlab",
                "train", *common, f"distributed={strategy}", f"out_dir={tmp_path / strategy}"]
        two = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        if two.returncode != 0 and "SIGABRT" in two.stderr:
            # Seen once in the full suite on the 2-core machine (a gloo worker aborted by a signal, not a
            # Python error): one retry from scratch. A real failure fails twice; its stderr is shown below.
            shutil.rmtree(tmp_path / strategy, ignore_errors=True)
            two = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert two.returncode == 0, two.stderr[-3000:]
        assert two.stdout.count("test accuracy:") == 1  # only rank 0 reports
        losses_two = [r["train_loss"] for r in read_metrics(tmp_path / strategy) if "train_loss" in r]
        assert losses_one == pytest.approx(losses_two, rel=1e-4, abs=1e-5), strategy
        top1_two = [r["top1"] for r in read_metrics(tmp_path / strategy) if "top1" in r]
        assert top1_one == pytest.approx(top1_two, abs=0.5), strategy
        assert (tmp_path / strategy / "last" / "model.safetensors").is_file()


@needs_fashion
def test_gradient_accumulation_matches_the_full_batch_and_tensorboard_logs(tmp_path):
    pytest.importorskip("tensorboard")
    plain = dict(augment=get_preset("fashion_mnist_vit").augment, max_steps=8, eval_every=100, log_every=2,
                 precision="fp32")  # bf16 autocast (auto on AMX CPUs) rounds a 64-batch and four 16-batches apart
    plain["augment"].hflip = False  # no randomness: both runs see identical batches
    full = train(tiny_run(tmp_path, "full", **plain))
    accumulated = train(tiny_run(tmp_path, "accum", grad_accum_steps=4, tensorboard=True, **plain))
    losses = [[r["train_loss"] for r in read_metrics(tmp_path / run) if "train_loss" in r] for run in ("full", "accum")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert accumulated["top1"] == pytest.approx(full["top1"], abs=0.5)
    assert list((tmp_path / "accum" / "tensorboard").glob("events.out.tfevents.*"))


@needs_fashion
def test_test_flip_evaluates_the_mean_logits_of_each_image_and_its_mirror(tmp_path, monkeypatch):
    import vitlab.train.tasks.classification as train_data

    config = tiny_run(tmp_path, max_steps=20, eval_subset=256, epochs=1, eval_every=1)
    config.augment.test_flip = True
    seen = {"calls": 0, "batches": []}
    original = train_data.ClassificationTask.evaluate

    def spy(self, model, info, autocast):
        def counted(x):
            seen["calls"] += 1
            return model(x)
        self.eval.set_epoch(0)
        seen["batches"] = [(self.augment.eval_transform(x), y) for x, y in self.eval]
        seen["calls"] = 0
        return original(self, counted, info, autocast)

    monkeypatch.setattr(train_data.ClassificationTask, "evaluate", spy)
    result = train(config)
    assert seen["calls"] == 2 * len(seen["batches"])  # each batch, then its mirror
    model = vitlab.load(config.out_dir).eval()
    with torch.no_grad():
        hits = sum(((model(x) + model(x.flip(-1))) / 2).argmax(-1).eq(y).sum().item() for x, y in seen["batches"])
    assert result["top1"] == pytest.approx(100 * hits / 256, abs=1e-9)
