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
