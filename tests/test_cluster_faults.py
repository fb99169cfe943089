"""What a cluster does to a run: SIGTERM to the whole process group (SLURM's `kill -TERM -- -PGID` of a job step,
DataLoader workers included), on one process and under torchrun; an evaluation that fails on one DDP rank only;
resuming a shard run on another number of processes (elastic resume)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vitlab.data import load_dataset, write_shards
from vitlab.train.loop import EXIT_INTERRUPTED

from test_shards import write_photos

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A three-class shard set: 24 training images in 5 shards, 9 validation images."""
    base = tmp_path_factory.mktemp("cluster")
    write_photos(base / "images" / "train", (8, 8, 8))
    write_photos(base / "images" / "val", (3, 3, 3), seed=1)
    for split in ("train", "val"):
        write_shards(load_dataset("imagefolder", split, data_dir=base / "images"), base / "shards" / split,
                     prefix=split, shard_size=5, progress=False)
    return base / "shards"


def train_args(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    """`vitlab train` arguments of a tiny ViT on `shards`, decoded by one DataLoader worker per process."""
    return ["fashion_mnist_vit", "dataset=shards", f"data_dir={shards}", "train_split=train", "eval_split=val",
            "image_size=32", "model=vit_tiny_patch4_32",
            "model_kwargs={'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'patch_size': 8}", "batch_size=4",
            "log_every=1", "num_workers=1", "progress=false", "device=cpu", f"out_dir={out_dir}", *extra]


def meta_step(run_dir: Path) -> int:
    return json.loads((run_dir / "last" / "meta.json").read_text())["step"]


def signal_group_after_step(command: list[str], step: int, timeout: float = 120) -> tuple[int, str, str]:
    """Starts `command` in its own session, waits for its `step N` line, sends SIGTERM to its whole process group
    (as SLURM does to a job step), returns (exit status, stdout, stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step {step} "):
            break
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        rest, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate()
        pytest.fail(f"still running {timeout} s after SIGTERM: {err[-3000:]}")
    return proc.returncode, "".join(seen) + rest, err


# ---------------------------------------------------------------------------------------------------------------
# SIGTERM to the process group
def test_sigterm_to_the_process_group_spares_the_workers_and_checkpoints_the_step(shards, tmp_path):
    out = tmp_path / "run"
    status, text, err = signal_group_after_step([sys.executable, "-m", "vitlab", "train",
                                                 *train_args(shards, out, "epochs=100")], step=3)
    assert status == EXIT_INTERRUPTED, err[-3000:]
    assert "killed by signal" not in err and "Traceback" not in err
    stopped = int(text.split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert stopped >= 3 and meta_step(out) == stopped


def test_sigterm_to_torchruns_process_group_stops_both_ranks_at_one_step_with_status_75(shards, tmp_path):
    """torchrun starts each rank in a session of its own and forwards SIGTERM to it (then waits
    --shutdown-timeout, 30 s, before SIGKILL). Both ranks (recorded by a shell that outlives them) exit 75 and
    `last/` holds the step they agreed on; torchrun itself exits 1 (its agent re-raises the signal as
    SignalException), which is torch's, not vitlab's, to change."""
    out = tmp_path / "ddp"
    statuses = tmp_path / "statuses"
    record = f"trap true TERM; {sys.executable} -m vitlab train \"$@\"; echo $RANK $? >> {statuses}"
    status, text, err = signal_group_after_step([*TORCHRUN, "2", "--no-python", "sh", "-c", record, "sh",
                                                 *train_args(shards, out, "epochs=100")], step=3)
    assert sorted(statuses.read_text().split("\n")[:2]) == ["0 75", "1 75"], err[-3000:]
    assert "[rank 1] received SIGTERM" in err and "killed by signal" not in err
    stopped = int(text.split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert stopped >= 3 and meta_step(out) == stopped
    assert status == 1 and "SignalException" in err  # torchrun's own status (see the docstring)


# ---------------------------------------------------------------------------------------------------------------
# elastic resume: the global batches are a function of (seed, epoch, global batch size) only
RECORD_SAMPLES = '''"""Runs `vitlab train` and records, for every optimiser step, a digest and the label of each sample this rank's
loader gave (before the device augmentation), in SEEN_DIR/rank<RANK>.jsonl."""
import hashlib, json, os, sys
import vitlab.train.loop as loop
from vitlab.cli import main

honest = loop._Run._optimizer_step


def recording(self, micro_batches):
    with open(os.path.join(os.environ["SEEN_DIR"], f"rank{os.environ.get('RANK', '0')}.jsonl"), "a") as seen:
        for images, labels in micro_batches:
            for image, label in zip(images, labels):
                digest = hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest()
                seen.write(json.dumps([self.state.step + 1, digest, int(label)]) + "\\n")
    return honest(self, micro_batches)


loop._Run._optimizer_step = recording
sys.exit(main(sys.argv[1:]))
'''


def global_batches(seen_dir: Path) -> dict[int, list]:
    """{step: sorted [digest, label] of every sample of that step's global batch, over all ranks}."""
    steps: dict[int, list] = {}
    for path in seen_dir.glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            step, digest, label = json.loads(line)
            steps.setdefault(step, []).append((digest, label))
    return {step: sorted(samples) for step, samples in steps.items()}


def recorded_train(tmp_path: Path, processes: int, shards: Path, out: Path, seen: Path, *extra: str) -> str:
    driver = tmp_path / "record_samples.py"
    driver.write_text(RECORD_SAMPLES)
    seen.mkdir(exist_ok=True)
    launcher = [sys.executable] if processes == 1 else [*TORCHRUN, str(processes)]
    run = subprocess.run([*launcher, str(driver), "train", *train_args(shards, out, "epochs=2", *extra)],
                         capture_output=True, text=True, env={**ENV, "SEEN_DIR": str(seen)}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_shard_run_resumed_on_another_number_of_processes_sees_the_same_global_batches(shards, tmp_path, before,
                                                                                          after):
    """Stopped at step 5 of 12 (mid-epoch) on `before` processes and resumed on `after`: every global batch holds the
    same decoded samples (same crops) as in an uninterrupted one-process run."""
    straight = tmp_path / "straight_seen"
    recorded_train(tmp_path, 1, shards, tmp_path / "straight", straight)
    elastic = tmp_path / "elastic_seen"
    recorded_train(tmp_path, before, shards, tmp_path / "elastic", elastic, "max_steps=5")
    assert meta_step(tmp_path / "elastic") == 5
    resumed = recorded_train(tmp_path, after, shards, tmp_path / "elastic", elastic)
    assert "resumed at step 5" in resumed and f"written by {before} process(es), this run has {after}" in resumed
    expected = global_batches(straight)
    assert sorted(expected) == list(range(1, 13)) and all(len(batch) == 4 for batch in expected.values())
    assert global_batches(elastic) == expected


def _device_loaders(world_size: int, per_rank: int) -> list:
    import torch

    from vitlab.data.loader import DeviceLoader

    images = torch.arange(42, dtype=torch.uint8).view(42, 1, 1, 1)  # sample i is the pixel value i
    return [DeviceLoader(images, torch.arange(42), per_rank, shuffle=True, drop_last=True, device="cpu", seed=3,
                         rank=rank, world_size=world_size) for rank in range(world_size)]


def _steps(loaders: list, count: int) -> list[list[int]]:
    """The next `count` global batches of the ranks' `loaders` (epochs roll over), each as sorted sample ids."""
    out, iterators = [], [iter(loader) for loader in loaders]
    while len(out) < count:
        parts = [next(it, None) for it in iterators]  # every rank ends its epoch at the same batch
        if parts[0] is None:
            iterators = [iter(loader) for loader in loaders]
            continue
        out.append(sorted(sum((labels.tolist() for _, labels in parts), [])))
    return out


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_the_in_memory_loader_resumes_on_another_number_of_ranks_with_the_same_global_batches(before, after):
    expected = _steps(_device_loaders(1, 8), 12)  # 5 global batches an epoch, 2 samples dropped
    first = _device_loaders(before, 8 // before)
    done = _steps(first, 3)
    resumed = _device_loaders(after, 8 // after)
    for loader in resumed:
        loader.load_state_dict(first[0].state_dict())
    assert done + _steps(resumed, 9) == expected
    with pytest.raises(ValueError, match=r"global batch of 8 \(\d per rank x \d rank\(s\)\) but this loader has 4"):
        _device_loaders(after, 4 // after)[0].load_state_dict(first[0].state_dict())


# ---------------------------------------------------------------------------------------------------------------
# an evaluation that raises on some DDP ranks only
FAILING_EVALUATION = '''"""Runs `vitlab train` with an evaluation that raises on the ranks listed in FAIL_RANKS (comma-separated) at step
FAIL_STEP; a failed rank waits 5 s (not 20) for the others to fail alike."""
import os, sys
import vitlab.train.distributed as distributed
import vitlab.train.loop as loop
from vitlab.cli import main
from vitlab.train.tasks.classification import ClassificationTask

honest = ClassificationTask.evaluate


def failing(self, model, info, autocast):
    if str(info.rank) in os.environ["FAIL_RANKS"].split(",") and loop_step[0] == int(os.environ["FAIL_STEP"]):
        raise OSError(f"injected failure on rank {info.rank}")
    return honest(self, model, info, autocast)


loop_step = [0]
evaluate_and_save = loop._Run._evaluate_and_save


def counting(self, *args, **kwargs):
    loop_step[0] = self.state.step
    return evaluate_and_save(self, *args, **kwargs)


ClassificationTask.evaluate, loop._Run._evaluate_and_save = failing, counting
distributed.FAILURE_WAIT_S = 5.0
sys.exit(main(sys.argv[1:]))
'''


def failing_evaluation(tmp_path: Path, shards: Path, out: Path, ranks: str) -> subprocess.CompletedProcess:
    driver = tmp_path / "failing_evaluation.py"
    driver.write_text(FAILING_EVALUATION)
    command = [*TORCHRUN, "2", str(driver), "train",
               *train_args(shards, out, "epochs=2", "eval_interval=4", "checkpoint_every_steps=2")]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**ENV, "FAIL_RANKS": ranks, "FAIL_STEP": "4"})
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"hung: an evaluation failing on rank(s) {ranks} did not end the run within 120 s "
                    f"({(hung.stderr or b'')[-2000:]!r})")


def test_an_evaluation_failing_on_one_ddp_rank_stops_every_rank_naming_it(shards, tmp_path):
    """Rank 1's evaluation raises at step 4 (rank 0 waits in the evaluation's collectives): both ranks end with
    EvaluationFailed naming rank 1 and its error, nothing is saved at step 4, and the step-2 checkpoint is intact
    and resumes. When every rank's evaluation fails, the step is checkpointed first, as on one process."""
    out = tmp_path / "one"
    run = failing_evaluation(tmp_path, shards, out, "1")
    assert run.returncode != 0
    said = "evaluation at step 4 failed (rank 1: OSError: injected failure on rank 1); every rank stopped"
    assert run.stderr.count(said) == 2, run.stderr[-3000:]  # rank 0 and rank 1
    assert "the last good checkpoint (step 2)" in run.stderr and meta_step(out) == 2
    again = subprocess.run([sys.executable, "-m", "vitlab", "train", *train_args(shards, out, "epochs=2",
                            "eval_interval=4", "checkpoint_every_steps=2", "max_steps=5")],
                           capture_output=True, text=True, env=ENV, timeout=120)
    assert again.returncode == 0 and "resumed at step 2" in again.stdout, again.stderr[-2000:]

    out = tmp_path / "both"
    run = failing_evaluation(tmp_path, shards, out, "0,1")
    assert run.returncode != 0
    assert "evaluation at step 4 failed (rank " in run.stderr and "The training was checkpointed at step 4" in \
        run.stderr, run.stderr[-3000:]
    assert meta_step(out) == 4
