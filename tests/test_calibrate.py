"""Choices by measurement (issue 25): the calibration's decision logic with a fake timer, its cache (hit, miss,
corrupt, foreign, another torch), VITLAB_CALIBRATE=0, explicit precision, the start-up line, and rank agreement.
Nothing here asserts a speed."""
import json
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import vitlab
import vitlab._calibrate as calibration
import vitlab.train.build as build
from vitlab.train.config import TrainConfig

CPU = torch.device("cpu")


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Calibration on, its cache in tmp_path; `calls` counts the measurements, whose seconds `times` sets."""
    monkeypatch.setenv("VITLAB_CALIBRATE", "1")
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    state = {"calls": 0, "times": {"fp32": 2.0, "bf16": 1.0}}

    def fake_measure(candidates, budget_s=calibration.BUDGET_S, timer=None):
        assert list(candidates) == ["fp32", "bf16"]  # fp32 first: the default
        state["calls"] += 1
        return dict(state["times"])

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return state


def test_decide_takes_bf16_only_past_the_margin():
    assert calibration.decide({"fp32": 2.5, "bf16": 1.0}, 1.15) == ("bf16", 2.5)
    assert calibration.decide({"fp32": 1.0, "bf16": 10.0}, 1.15) == ("fp32", 0.1)
    choice, ratio = calibration.decide({"fp32": 1.1, "bf16": 1.0}, 1.15)  # faster, but within the margin
    assert choice == "fp32" and ratio == pytest.approx(1.1)
    assert calibration.decide({"fp32": 1.15, "bf16": 1.0}, 1.15)[0] == "bf16"


def test_measure_interleaves_the_candidates_within_the_budget_and_takes_medians():
    clock, order = [0.0], []
    durations = {"fp32": iter([0.5, 0.25, 0.25, 1.0, 0.25]), "bf16": iter([0.25, 0.125, 0.5, 0.125, 0.125])}

    def candidate(name):
        def run():
            order.append(name)
            clock[0] += next(durations[name])
        return run

    seconds = calibration.measure({"fp32": candidate("fp32"), "bf16": candidate("bf16")}, budget_s=3.75,
                                  timer=lambda: clock[0])
    # a warm-up round of 0.75 s, so (3.75 - 0.75) / 0.75 = 4 timed rounds, each fp32 then bf16
    assert order == ["fp32", "bf16"] * 5
    assert seconds == {"fp32": 0.25, "bf16": 0.125}  # medians: the 1.0 and 0.5 outliers do not count
    clock[0], order[:] = 0.0, []
    durations = {"fp32": iter([5.0] * 4), "bf16": iter([5.0] * 4)}
    calibration.measure({"fp32": candidate("fp32"), "bf16": candidate("bf16")}, budget_s=1.0, min_rounds=3,
                        timer=lambda: clock[0])
    assert len(order) == 2 * 4  # over budget: the minimum of 3 rounds after the warm-up, no more


def test_cache_file_follows_vitlab_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "v"))
    assert calibration.cache_file() == tmp_path / "v" / "calibration.json"
    monkeypatch.delenv("VITLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert calibration.cache_file() == tmp_path / "xdg" / "vitlab" / "calibration.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert calibration.cache_file() == tmp_path / "home" / ".cache" / "vitlab" / "calibration.json"


def test_the_suite_never_calibrates_into_the_real_cache():
    assert calibration.cache_file() != Path.home() / ".cache" / "vitlab" / "calibration.json"
    assert not calibration.calibration_enabled()  # tests/conftest.py: VITLAB_CALIBRATE=0 unless a test opts in


def test_a_miss_measures_and_caches_what_was_measured_then_a_hit_does_not(measuring, tmp_path):
    first = calibration.calibrate("precision", "w256-t64", lambda: {"fp32": None, "bf16": None}, 1.15)
    assert (first.choice, first.ratio, first.cached, measuring["calls"]) == ("bf16", 2.0, False, 1)
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["format"] == calibration.FORMAT
    [entry] = saved["entries"].values()
    assert entry["key"] == {"what": "precision", "cpu": calibration.cpu_name(), "torch": torch.__version__,
                            "shape": "w256-t64"}
    assert entry["seconds"] == {"fp32": 2.0, "bf16": 1.0} and entry["ratio"] == 2.0 and entry["choice"] == "bf16"
    assert entry["date"][:2] == "20"

    def never():
        raise AssertionError("a cache hit must not build the workload")

    again = calibration.calibrate("precision", "w256-t64", never, 1.15)
    assert (again.choice, again.seconds, again.cached, measuring["calls"]) == ("bf16", first.seconds, True, 1)
    calibration.calibrate("precision", "w512-t64", lambda: {"fp32": None, "bf16": None}, 1.15)  # another shape
    assert measuring["calls"] == 2
    assert len(json.loads((tmp_path / "calibration.json").read_text())["entries"]) == 2


def test_another_torch_version_is_a_miss(measuring, tmp_path, monkeypatch):
    calibration.calibrate("precision", "w256-t64", lambda: {"fp32": None, "bf16": None}, 1.15)
    this_torch = torch.__version__
    monkeypatch.setattr(calibration.torch, "__version__", "9.9.9")
    measuring["times"] = {"fp32": 1.0, "bf16": 3.0}
    other = calibration.calibrate("precision", "w256-t64", lambda: {"fp32": None, "bf16": None}, 1.15)
    assert (other.choice, other.cached, measuring["calls"]) == ("fp32", False, 2)
    entries = json.loads((tmp_path / "calibration.json").read_text())["entries"].values()
    assert sorted(e["key"]["torch"] for e in entries) == sorted([this_torch, "9.9.9"])  # both kept


@pytest.mark.parametrize("content, why", [("{not json", "unreadable"), ('{"entries": {}}', "not a"),
                                          ("[1, 2]", "not a"), (b"\xff\xfe", "unreadable")])
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_note_and_rewritten(measuring, tmp_path, capsys, content, why):
    path = tmp_path / "calibration.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = calibration.calibrate("precision", "w256-t64", lambda: {"fp32": None, "bf16": None}, 1.15)
    assert not result.cached and measuring["calls"] == 1
    note = capsys.readouterr().err.strip()
    assert len(note.splitlines()) == 1 and str(path) in note and why in note
    assert len(json.loads(path.read_text())["entries"]) == 1  # rewritten, whole
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temporary file left


def test_an_entry_under_a_foreign_key_is_not_a_hit(measuring, tmp_path):
    calibration.calibrate("precision", "w256-t64", lambda: {"fp32": None, "bf16": None}, 1.15)
    path = tmp_path / "calibration.json"
    saved = json.loads(path.read_text())
    [name] = saved["entries"]
    saved["entries"][name]["key"]["cpu"] = "another CPU"  # stored under this machine's name, holds another's
    saved["entries"]["garbage"] = [1, 2]
    path.write_text(json.dumps(saved))
    assert not calibration.calibrate("precision", "w256-t64", lambda: {"fp32": None, "bf16": None}, 1.15).cached
    assert list(json.loads(path.read_text())["entries"]) == [name]  # the foreign entries dropped


def test_auto_on_a_cpu_follows_the_measurement_of_the_model_and_says_so(measuring, tmp_path):
    model = vitlab.create_model("vit_tiny_patch4_32", embed_dim=32, depth=1, num_heads=2)
    assert build.model_shape(model) == (32, 65) and build.model_shape(torch.nn.Linear(2, 2)) is None
    line = build.describe_precision(TrainConfig(precision="auto", batch_size=48), CPU, model)
    assert line == [f"precision: bf16 autocast (auto: 2.00x fp32 measured on {calibration.cpu_name()}, "
                    f"{type(model).__name__} w32-t128 b64; cached in {tmp_path / 'calibration.json'})"]
    assert build.resolve_precision("auto", CPU, model, batch=48) == "bf16" and measuring["calls"] == 1  # once
    measuring["times"] = {"fp32": 1.0, "bf16": 10.0}
    line = build.describe_precision(TrainConfig(precision="auto"), CPU)  # no model: one block, measured now
    assert line[0].startswith("precision: fp32 (auto: fp32, bf16 measured 0.10x fp32 on ")
    assert "block w256-t64 (bf16 needs >= 1.15x); cached in" in line[0]
    build._MEASURED.clear()  # a new process: reads the cache
    assert "read from" in build.describe_precision(TrainConfig(precision="auto"), CPU)[0]
    assert measuring["calls"] == 2
    assert build.choose_precision("auto", torch.device("cuda")) == build.PrecisionChoice("bf16", "auto: CUDA")
    assert measuring["calls"] == 2  # CUDA: bf16 without measuring


def test_the_model_workload_is_timed_on_a_copy_and_leaves_the_random_stream_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    model = vitlab.create_model("vit_tiny_patch4_32", embed_dim=32, depth=1, num_heads=2, drop_path_rate=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    name, candidates = build._precision_workload(model, 4)
    measured = calibration.calibrate("precision", name, candidates, 1.15, budget_s=0.0)  # timed: a warm-up, 3 rounds
    assert set(measured.seconds) == {"fp32", "bf16"} and all(t > 0 for t in measured.seconds.values())
    assert name.endswith("b4") and torch.equal(torch.rand(3), expected)  # the calibration drew nothing from it
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    huge = vitlab.create_model("vit_base_patch16_224", depth=2)  # one sample: over TIMED_FLOPS
    assert build._precision_workload(huge, 64)[0] == "block w1024-t256"


def test_explicit_precision_never_calibrates(measuring, monkeypatch):
    monkeypatch.setattr(build, "calibrate", lambda *a, **k: pytest.fail("an explicit precision was calibrated"))
    assert build.choose_precision("bf16", CPU) == build.PrecisionChoice("bf16", "")
    assert build.describe_precision(TrainConfig(precision="fp32"), CPU) == ["precision: fp32"]


def test_vitlab_calibrate_0_takes_the_flag_rule_and_says_so(monkeypatch):
    monkeypatch.setattr(build, "calibrate", lambda *a, **k: pytest.fail("VITLAB_CALIBRATE=0 measured"))
    monkeypatch.setattr(build, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": ["avx512_bf16"])
    assert build.describe_precision(TrainConfig(precision="auto"), CPU) == [
        "precision: fp32 (auto: VITLAB_CALIBRATE=0, no amx_bf16: fp32)"]
    monkeypatch.setattr(build, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": ["amx_bf16"])
    assert build.describe_precision(TrainConfig(precision="auto"), CPU) == [
        "precision: bf16 autocast (auto: VITLAB_CALIBRATE=0, amx_bf16: bf16)"]


def test_every_rank_takes_rank_0s_decision():
    """Ranks 0 and 1 (threads sharing a real key-value store, as torchrun's ranks share theirs): rank 1 asks first
    and waits; its own measurement would differ, but it never measures. Rank 0 asking again decides nothing new."""
    store, answers, decided = dist.HashStore(), {}, []

    def decide(rank):
        def here():
            decided.append(rank)
            return {"precision": "bf16" if rank == 0 else "fp32", "why": f"rank {rank}"}
        return here

    follower = threading.Thread(target=lambda: answers.update({1: calibration.agreed("p", decide(1), 1, store)}))
    follower.start()
    answers[0] = calibration.agreed("p", decide(0), 0, store)
    follower.join(timeout=30)
    assert answers == {0: {"precision": "bf16", "why": "rank 0"}, 1: {"precision": "bf16", "why": "rank 0"}}
    assert calibration.agreed("p", decide(0), 0, store) == answers[0] and decided == [0]


def test_the_precision_workload_runs_both_candidates_with_gradients():
    steps = calibration.precision_workload(64, 17, flops=1e6)
    assert list(steps) == ["fp32", "bf16"]
    for run in steps.values():
        run()  # forward + backward, grads cleared: no error, no growth
    assert calibration.shape_class(192, 65) == "w256-t128" and calibration.shape_class(256, 64) == "w256-t64"
