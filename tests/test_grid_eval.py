"""Issue 23 point 1: an evaluation off the training grid uses the current weights, under torch's fused CPU AdamW
(vitlab's CPU default, which updates parameters in place without bumping their version counter)."""
import json
from pathlib import Path

import pytest

from vitlab.train import apply_overrides, evaluate_checkpoint, get_preset, train

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="../shared/data/fashion-mnist not present")
def test_in_run_eval_at_another_grid_equals_vitlab_eval_of_the_checkpoint(tmp_path):
    """A model built for 14 px (a 2 × 2 grid, learned positions) trained and evaluated on 28 px Fashion-MNIST
    (a 4 × 4 grid: every forward resamples the table), four evaluations: the last in-run one (metrics.jsonl)
    equals `vitlab eval` of the checkpoint written at that step."""
    config = apply_overrides(get_preset("fashion_mnist_vit"), [
        "model_kwargs={'patch_size': 7, 'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'img_size': 14, "
        "'pos_embed': 'learn'}", "optimizer=adamw", "lr=0.01", "train_subset=512", "eval_subset=256",
        "batch_size=64", "epochs=2", "eval_every=0.5", "log_every=8", "progress=false", f"data_dir={FASHION}",
        f"out_dir={tmp_path / 'run'}"])
    result = train(config)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "top1" in json.loads(line)]
    assert len(evals) == 4 and evals[-1]["step"] == result["step"]
    saved = evaluate_checkpoint(tmp_path / "run" / "last")
    assert (saved["top1"], saved["eval_loss"]) == (evals[-1]["top1"], evals[-1]["eval_loss"])
