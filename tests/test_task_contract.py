"""The Task contract (vitlab/train/tasks/_contract.py): every task of `TASKS` is driven through the protocol alone,
as the engine drives it (as test_model_contract.py does for models); the loop names no task; the run state keeps one
best value and still reads the per-metric records of older checkpoints."""
import ast
import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from vitlab.train import apply_overrides, get_preset, train
from vitlab.train.build import build_model
from vitlab.train.checkpoint import STATE
from vitlab.train.distributed import DistInfo
from vitlab.train.evaluate import evaluate
from vitlab.train.resume import RunState
from vitlab.train.tasks import TASKS, Task, build_task, check_task, task_kind, task_members

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
                                or not (SHARED / "tinyshakespeare" / "input.txt").is_file(),
                                reason="../shared/data/fashion-mnist or tinyshakespeare not present")
CPU = DistInfo(0, 1, 0, torch.device("cpu"))
IMAGE = ["batch_size=16", "train_subset=64", "eval_subset=32", "progress=false", "num_workers=0"]
# (preset, overrides, a registered model of another family)
CASES = {
    "classification": ("fashion_mnist_vit", IMAGE + ["model_kwargs.embed_dim=32", "model_kwargs.depth=1",
                                                     "model_kwargs.num_heads=2"], "gpt_char_tiny"),
    "segmentation": ("fashion_scenes_vit_linear", IMAGE + ["model_kwargs.embed_dim=32", "model_kwargs.depth=2",
                                                           "model_kwargs.num_heads=2"], "clip"),
    "clip": ("fashion_mnist_clip_vit", IMAGE + [
        "model_kwargs.image_kwargs={'patch_size': 7, 'embed_dim': 32, 'depth': 1, 'num_heads': 2}",
        "model_kwargs.text_kwargs={'width': 32, 'layers': 1, 'heads': 2, 'context_length': 32}",
        "model_kwargs.embed_dim=32"], "vit_tiny_patch4_32"),
    "lm": ("shakespeare_char_gpt", ["batch_size=4", "block_size=16", "eval_subset=8", "progress=false",
                                    f"data_dir={SHARED}", "model_kwargs.n_layer=1", "model_kwargs.n_embd=16",
                                    "model_kwargs.n_head=2"], "vit_tiny_patch4_32"),
}


def test_every_row_of_the_task_table_has_a_contract_case():
    assert [kind.name for kind in TASKS] == ["lm", "segmentation", "clip", "classification"]
    assert set(CASES) == {kind.name for kind in TASKS}
    picks = {"tinyshakespeare": "lm", "textfile:/x.txt": "lm", "ade20k": "segmentation",
             "fashion_mnist_scenes": "segmentation", "fashion_mnist_captions": "clip", "image_text:/x": "clip",
             "cifar10": "classification", "imagefolder:/x": "classification", "shards": "classification"}
    assert {name: task_kind(name).name for name in picks} == picks


def test_an_object_missing_part_of_the_contract_is_refused_by_name():
    class Half:
        name, unit, primary = "half", "images", ("top1", "max")

        def loss(self, model, batch, generator):
            return torch.zeros(())

    with pytest.raises(TypeError, match=r"Half does not implement vitlab.train.tasks.Task \(missing: train, "
                                        r"eval_size, files, check_model, model_kwargs, prepare_model"):
        check_task(Half())
    assert task_members()[:6] == ["name", "unit", "primary", "train", "eval_size", "files"]


def _batch(loader, n: int = 0):
    for i, batch in enumerate(loader):
        if i == n:
            return batch


def _equal(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@needs_data
@pytest.mark.parametrize("name", list(CASES))
def test_each_task_runs_through_the_protocol_alone(name, tmp_path):
    preset, overrides, other_family = CASES[name]
    config = apply_overrides(get_preset(preset), overrides + [f"out_dir={tmp_path / 'run'}"])
    torch.manual_seed(0)
    task = build_task(config, CPU)
    assert isinstance(task, Task) and task.name == name == task_kind(config.dataset).name
    assert task.unit in ("images", "tokens") and task.primary[1] in ("max", "min")
    assert task.eval_size > 0 and all(len(entry) == 2 for entry in task.files) and task.files
    assert isinstance(task.describe(), str) and task.describe() and isinstance(task.notes(), list)
    assert task.samples_per_batch(config.batch_size) == config.batch_size * (config.block_size if name == "lm" else 1)

    task.check_model(config.model)  # its own family passes; another is refused before anything is built
    with pytest.raises(ValueError, match=rf"dataset {config.dataset!r} needs .*; model {other_family!r}"):
        task.check_model(other_family)

    model = build_model(config, task)  # model_kwargs() then prepare_model()
    example = task.example_input(torch.device("cpu"))
    with torch.no_grad():
        model.eval()
        model(*example) if isinstance(example, tuple) else model(example)
    model.train()
    generator = torch.Generator().manual_seed(0)
    loss = task.loss(model, _batch(task.train), generator)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)

    result = evaluate(model, task, CPU, contextlib.nullcontext())
    assert math.isfinite(result[task.primary[0]]) and model.training  # evaluated in eval mode, then restored

    task.train.set_epoch(0)  # the loader's position survives state_dict / load_state_dict
    iterator = iter(task.train)
    next(iterator)
    saved = task.train.state_dict()
    expected = next(iterator)
    again = build_task(config, CPU)
    again.train.load_state_dict(saved)
    assert _equal(next(iter(again.train)), expected)

    task.save_assets(tmp_path)
    assert json.loads(json.dumps(task.model_kwargs(), default=str))


def test_the_loop_names_no_task():
    source = (Path(__import__("vitlab.train.loop").train.loop.__file__)).read_text()
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.update(node.name.split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(node.value.replace("_", " ").split())
    tasks = {kind.name for kind in TASKS} | {"ClassificationTask", "SegmentationTask", "ClipTask", "LMTask",
                                              "TrainData", "LMData", "SegData", "ClipData", "SegmentationModel"}
    metrics = {"top1", "miou", "eval_loss", "zeroshot_top1", "perplexity", "tokens", "images", "head", "text",
               "freeze_text"}
    assert not words & (tasks | metrics), f"vitlab/train/loop.py names {sorted(words & (tasks | metrics))}"
    checked = {ast.unparse(node.args[1]) for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Name) and node.func.id == "isinstance"}
    assert checked <= {"nn.parallel.DistributedDataParallel", "float"}, checked  # DDP's no_sync, finite metrics


def test_run_state_keeps_one_best_and_reads_older_records():
    state = RunState()
    assert state.improves(80.0, "top1", "max") and not state.improves(79.0, "top1", "max")
    assert state.improves(81.5, "top1", "max") and (state.best, state.best_metric) == (81.5, "top1")
    low = RunState()
    assert low.improves(2.5, "eval_loss", "min") and not low.improves(2.6, "eval_loss", "min")
    old = {"step": 40, "epoch": 1, "best_top1": 71.25, "best_loss": math.inf, "best_miou": -1.0,
           "best_zeroshot_top1": -1.0, "pending_eval": True}  # a run record written before the task contract
    assert RunState.from_saved(old, "top1") == RunState(40, 1, 71.25, "top1", True)
    assert RunState.from_saved({**old, "best_loss": 2.25}, "eval_loss").best == 2.25
    assert RunState.from_saved(old, "miou").best is None  # -1: no evaluation yet
    assert RunState.from_saved(old, "eval_loss").best is None  # inf: no evaluation yet
    assert RunState.from_saved({**old, "best_zeroshot_top1": 12.5}, "zeroshot_top1").best == 12.5


def _records(run: Path) -> list[dict]:
    timing = ("elapsed_s", "images_per_s", "tokens_per_s", "mfu")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@needs_data
def test_a_last_checkpoint_in_the_older_run_format_resumes_exactly(tmp_path):
    """A `last/` whose run record has the per-metric best fields of older vitlab resumes and finishes exactly as
    the uninterrupted run, keeping the best it recorded."""
    preset, overrides, _ = CASES["classification"]
    common = overrides + ["epochs=2", "eval_every=0.5", "log_every=2", "lr=3e-3"]
    straight = train(apply_overrides(get_preset(preset), common + [f"out_dir={tmp_path / 'a'}"]))
    partial = apply_overrides(get_preset(preset), common + [f"out_dir={tmp_path / 'b'}", "max_steps=6"])
    first = train(partial)
    state_file = tmp_path / "b" / "last" / STATE
    state = torch.load(state_file, weights_only=True)
    run = state["run"]
    assert run["best_metric"] == "top1" and run["best"] == first["best_top1"]
    state["run"] = {"step": run["step"], "epoch": run["epoch"], "best_top1": run["best"], "best_loss": math.inf,
                    "best_miou": -1.0, "best_zeroshot_top1": -1.0, "pending_eval": run["pending_eval"]}
    torch.save(state, state_file)
    resumed = train(apply_overrides(get_preset(preset), common + [f"out_dir={tmp_path / 'b'}"]))
    assert resumed["best_top1"] == straight["best_top1"] and resumed["top1"] == straight["top1"]
    before = _records(tmp_path / "a")
    assert _records(tmp_path / "b") == before  # step 6 is an evaluation step of both runs
