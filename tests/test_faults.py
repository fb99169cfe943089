"""Faults during training (issue 11): a crash between the best/ and last/ writes, divergence at an evaluation, two
runs in one directory, a missing or truncated config.json, a full disk, duplicate log records after a resume, and an
evaluation that raises. Each test fails on the code before its fix."""
import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitlab.train.checkpoint as checkpoint
import vitlab.train.loop as loop
from vitlab.compare import plot_curves
from vitlab.data import DatasetFormatError
from vitlab.train import TrainingDiverged, train

from test_train import needs_fashion, read_metrics, tiny_run


def quick(tmp_path, name="run", **overrides):
    """32 steps, an evaluation and checkpoint every 8."""
    return tiny_run(tmp_path, name, **{"epochs": 1, "eval_every": 0.25, **overrides})


def rising_top1(monkeypatch):
    """Every evaluation scores higher than the one before, so each is a new best."""
    honest, count = loop.evaluate, {"n": 0}

    def evaluate(*args, **kwargs):
        count["n"] += 1
        return {**honest(*args, **kwargs), "top1": float(count["n"])}

    monkeypatch.setattr(loop, "evaluate", evaluate)


def no_leftovers(run_dir: Path) -> bool:
    return not list(run_dir.glob("*.tmp*")) and not list(run_dir.glob("*.old"))


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# ---- 1: the best/ + last/ pair --------------------------------------------------------------------------------
@needs_fashion
def test_crash_between_the_two_checkpoint_writes_keeps_the_best_model(tmp_path, monkeypatch):
    rising_top1(monkeypatch)
    honest, calls = loop.save_checkpoint, {"n": 0}

    def crashing(directory, *args, **kwargs):  # dies inside the 2nd write of the 4th (last) evaluation
        calls["n"] += 1
        if calls["n"] == 8:
            partial = Path(directory).with_name(Path(directory).name + ".tmp")
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt("killed")
        return honest(directory, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(quick(tmp_path))
    monkeypatch.setattr(loop, "save_checkpoint", honest)
    result = train(quick(tmp_path))
    run = tmp_path / "run"
    assert result["step"] == 32
    best, last = json.loads((run / "best" / "meta.json").read_text()), json.loads((run / "last" / "meta.json").read_text())
    assert best["step"] == last["step"] == 32 and best["top1"] == result["best_top1"]
    a, b = load_file(str(run / "best" / "model.safetensors")), load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the final evaluation is the best: best/ holds its weights
    assert no_leftovers(run)


# ---- 2: divergence ------------------------------------------------------------------------------------------------
@needs_fashion
def test_weights_diverging_on_an_evaluation_step_are_never_saved(tmp_path, monkeypatch):
    honest = loop._Run._optimizer_step

    def blows_up_at_step_8(self, batches):  # the loss of step 8 is finite, the weights after it are not
        loss = honest(self, batches)
        if self.state.step == 7:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(loop._Run, "_optimizer_step", blows_up_at_step_8)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet") as caught:
        train(quick(tmp_path))
    assert "last" not in str(caught.value).replace("last good", "")
    run = tmp_path / "run"
    assert not (run / "last").exists() and not (run / "best").exists() and no_leftovers(run)
    logged = [strict_loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # strict JSON too
    assert any(r.get("eval_loss", 0.0) is None for r in logged)  # the NaN evaluation, as null


def test_meta_json_is_strict_json(tmp_path):
    checkpoint.save_checkpoint(tmp_path / "last", {"w": torch.ones(2)}, {"step": 1},
                               {"step": 1, "eval_loss": float("nan"), "top1": float("inf")})
    meta = strict_loads((tmp_path / "last" / "meta.json").read_text())
    assert meta == {"step": 1, "eval_loss": None, "top1": None}


# ---- 3: the run directory's lock ----------------------------------------------------------------------------------
@needs_fashion
def test_a_second_run_in_a_busy_directory_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from vitlab.train.checkpoint import RunDirLock
        lock = RunDirLock(Path({str(run)!r}))
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} on host"):
            train(quick(tmp_path, max_steps=8))
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "last").exists() and not (run / "metrics.jsonl").exists()
    assert train(quick(tmp_path, max_steps=8))["step"] == 8  # the OS released the dead holder's lock
    assert list(checkpoint.remove_stale_temporaries(run)) == []


def test_each_writer_has_its_own_temporary(tmp_path, monkeypatch):
    seen = []
    honest = checkpoint.save_file
    monkeypatch.setattr(checkpoint, "save_file", lambda w, path, **kw: (seen.append(path), honest(w, path, **kw)))
    checkpoint.save_checkpoint(tmp_path / "last", {"w": torch.ones(2)}, {})
    assert Path(seen[0]).parent.name == f"last.tmp-{__import__('os').getpid()}"


# ---- 4: the config a run resumes under ----------------------------------------------------------------------------
@needs_fashion
def test_resume_without_config_json_still_refuses_a_changed_config(tmp_path):
    train(quick(tmp_path, max_steps=8))
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(ValueError, match="lr: 0.002 → 0.1"):
        train(quick(tmp_path, lr=0.1))


@needs_fashion
def test_truncated_config_json_is_named_and_the_checkpoint_copy_is_used(tmp_path, capsys):
    train(quick(tmp_path, max_steps=8))
    saved = tmp_path / "run" / "config.json"
    saved.write_text(saved.read_text()[:100])
    with pytest.raises(ValueError, match="lr: 0.002 → 0.1"):
        train(quick(tmp_path, lr=0.1))
    assert train(quick(tmp_path, max_steps=16))["step"] == 16
    assert f"{saved} is unreadable" in capsys.readouterr().out
    assert json.loads(saved.read_text())["config"]["max_steps"] == 16  # rewritten whole


# ---- 7: a full disk ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["torch", "safetensors"])
def test_disk_full_is_said_plainly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    checkpoint.save_checkpoint(tmp_path / "last", {"w": torch.ones(2)}, {"step": 1}, {"step": 1})

    def torch_full(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    def safetensors_full(weights, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    if failure == "torch":
        monkeypatch.setattr(checkpoint.torch, "save", torch_full)
        written = "state.pt"
    else:
        monkeypatch.setattr(checkpoint, "save_file", safetensors_full)
        written = "model.safetensors"
    with pytest.raises(OSError, match=rf"no space left on device writing \S+{written}") as caught:
        checkpoint.save_checkpoint(tmp_path / "last", {"w": torch.zeros(2)}, {"step": 2}, {"step": 2})
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary left
    assert torch.equal(load_file(str(tmp_path / "last" / "model.safetensors"))["w"], torch.ones(2))
    assert json.loads((tmp_path / "last" / "meta.json").read_text())["step"] == 1


# ---- 10: the log after a resume, and curves by step ---------------------------------------------------------------
@needs_fashion
def test_resumed_log_has_one_record_per_step(tmp_path):
    train(quick(tmp_path, max_steps=16))
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "a") as log:  # logged after the step-16 checkpoint by a run then killed
        log.write(json.dumps({"step": 24, "epoch": 0.75, "train_loss": 1.0}) + "\n" + '{"step": 3')
    train(quick(tmp_path))
    records = read_metrics(run)
    keys = [(r["step"], "top1" in r) for r in records]
    assert len(keys) == len(set(keys))
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    assert [s for s, is_eval in keys if is_eval] == [8, 16, 24, 32]


def test_curves_are_plotted_by_step_not_by_position(tmp_path, monkeypatch):
    import matplotlib.axes

    plotted = []
    honest = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, x, y, *a, **k: (plotted.append((list(x), list(y))),
                                                                                  honest(ax, x, y, *a, **k))[1])
    duplicated = [(0.5, 10.0), (1.0, 20.0), (0.5, 10.0), (1.0, 20.0), (1.5, 30.0)]  # a resumed run's old log
    clean = [(0.5, 12.0), (1.0, 22.0), (1.5, 32.0)]
    records = [{"row": "r", "col": "c", "seed": s, "curve": c} for s, c in enumerate((duplicated, clean))]
    plot_curves(records, tmp_path / "curves.png", "t")
    assert plotted == [([0.5, 1.0, 1.5], [11.0, 21.0, 31.0])]


# ---- 6: an evaluation that raises -------------------------------------------------------------------------------
@needs_fashion
def test_an_evaluation_error_checkpoints_the_training_first(tmp_path, monkeypatch):
    honest = loop.evaluate

    def unreadable(*args, **kwargs):
        raise DatasetFormatError("val/0003.png: cannot identify image file")

    monkeypatch.setattr(loop, "evaluate", unreadable)
    with pytest.raises(RuntimeError, match=r"checkpointed at step 8 .*run the same command again") as caught:
        train(quick(tmp_path))
    assert "0003.png" in str(caught.value)
    run = tmp_path / "run"
    assert json.loads((run / "last" / "meta.json").read_text())["step"] == 8 and not (run / "best").exists()
    monkeypatch.setattr(loop, "evaluate", honest)
    result = train(quick(tmp_path))
    assert result["step"] == 32
    assert [r["step"] for r in read_metrics(run) if "top1" in r] == [8, 16, 24, 32]  # step 8 evaluated on resume
