"""Semantic segmentation through the training engine: Fashion-MNIST scenes (real data, in memory) and ADE20K fixtures
in the published layout (encoded, loader workers), best/ by mIoU, `vitlab eval`, `vitlab segment --head`, resume."""
import json
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import write_ade
from PIL import Image

from vitlab.cli import main
from vitlab.train import apply_overrides, get_preset, train
from vitlab.train.config import OverrideError

TINY = ["model_kwargs.embed_dim=32", "model_kwargs.depth=4", "model_kwargs.num_heads=2", "batch_size=16",
        "train_subset=64", "eval_subset=32", "epochs=2", "eval_every=1", "log_every=2", "progress=false",
        "num_workers=0"]


def scenes_run(tmp_path, preset="fashion_scenes_crate_alpha_upernet", *extra):
    config = apply_overrides(get_preset(preset), TINY + [f"out_dir={tmp_path / 'run'}", *extra])
    return config, train(config)


def test_scenes_train_evaluate_and_keep_the_best_miou(tmp_path, capsys):
    config, result = scenes_run(tmp_path)
    assert 0 <= result["miou"] <= 100 and 0 <= result["aacc"] <= 100 and result["step"] == 8
    assert set(result["iou_per_class"]) == {"background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "miou" in json.loads(line)]
    assert len(evals) == 2 and result["best_miou"] == max(e["miou"] for e in evals)
    meta = json.loads((tmp_path / "run" / "segmentation.json").read_text())
    assert meta["classes"][0] == "background" and len(meta["palette"]) == 11 and meta["image_size"] == 64
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"mIoU {result['best_miou']:.2f}%" in out and "IoU background" in out  # best/ is evaluated


def test_segment_head_writes_overlays_with_ground_truth(tmp_path, capsys):
    scenes_run(tmp_path, "fashion_scenes_vit_linear")
    photo = tmp_path / "photo.png"
    Image.fromarray((torch.rand(50, 70) * 255).byte().numpy()).save(photo)
    assert main(["segment", "--head", str(tmp_path / "run"), "fashion_scenes:test:3"]) == 2  # not a dataset
    assert main(["segment", "--head", str(tmp_path / "run"), "fashion_mnist_scenes:test:3", str(photo),
                 "--out", str(tmp_path / "maps"), "--save-masks"]) == 0
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["fashion_mnist_scenes_test_3_classes.png", "fashion_mnist_scenes_test_3_semantic.png",
                       "photo_classes.png", "photo_semantic.png"]
    with Image.open(tmp_path / "maps" / "photo_classes.png") as mask:
        assert mask.size == (70, 50)  # at the photo's own size (the prediction is resized back)
        assert int(np.asarray(mask).max()) <= 10
    with Image.open(tmp_path / "maps" / "fashion_mnist_scenes_test_3_semantic.png") as figure:
        assert figure.size[0] > 2.5 * figure.size[1]  # input, prediction, ground truth and a legend side by side


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    _, full = scenes_run(tmp_path / "a", "fashion_scenes_crate_linear")
    config = apply_overrides(get_preset("fashion_scenes_crate_linear"), TINY + [f"out_dir={tmp_path / 'b'}",
                                                                                "max_steps=4"])
    train(config)
    resumed = train(apply_overrides(config, ["max_steps=0"]))
    assert resumed["miou"] == full["miou"] and resumed["best_miou"] == full["best_miou"]


def test_head_and_dataset_must_agree(tmp_path):
    with pytest.raises(ValueError, match="choose a head"):
        scenes_run(tmp_path, "fashion_scenes_vit_linear", "head=None")
    with pytest.raises(ValueError, match="is not one"):
        train(apply_overrides(get_preset("fashion_mnist_vit"), ["head=linear", f"out_dir={tmp_path / 'c'}",
                                                                "train_subset=128", "eval_subset=64"]))
    with pytest.raises(ValueError, match="augment.randaugment_n does not apply to segmentation"):
        scenes_run(tmp_path, "fashion_scenes_vit_linear", "augment.randaugment_n=2")
    with pytest.raises(OverrideError, match="head_kwargs"):
        apply_overrides(get_preset("fashion_mnist_vit"), ["head_kwargs.channels=8"])
    with pytest.raises(OverrideError, match="layer_decay"):
        apply_overrides(get_preset("fashion_scenes_vit_linear"), ["layer_decay=0"])


def test_ade20k_layout_trains_through_loader_workers_with_slide_evaluation(tmp_path):
    write_ade(tmp_path / "data")
    config = apply_overrides(get_preset("ade20k_crate_alpha_b16_upernet"), [
        "model=crate_alpha_tiny_patch16_224", "pretrained=false", "model_kwargs.embed_dim=32",
        "model_kwargs.depth=4", "model_kwargs.num_heads=2", "head_kwargs.channels=8", f"data_dir={tmp_path / 'data'}",
        "image_size=32", "eval_stride=16", "batch_size=2", "steps=2", "warmup_steps=1", "eval_interval=2",
        "num_workers=0", "progress=false", f"out_dir={tmp_path / 'run'}"])
    result = train(config)
    assert result["step"] == 2 and 0 <= result["miou"] <= 100
    assert len(result["iou_per_class"]) == 150
    assert main(["eval", str(tmp_path / "run"), "eval_mode=whole"]) == 0  # whole images of any size: padded


def test_ade20k_shards_written_by_the_cli_train_like_the_folders(tmp_path, capsys):
    write_ade(tmp_path / "data")
    assert main(["shards", "ade20k", str(tmp_path / "shards"), "--split", "training,validation",
                 "--data-dir", str(tmp_path / "data"), "--shard-size", "3"]) == 0
    assert "4 image + mask pairs, 150 classes" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "shards" / "training").glob("*.tar")) == ["training-000000.tar",
                                                                                        "training-000001.tar"]
    config = apply_overrides(get_preset("ade20k_crate_alpha_b16_upernet"), [
        "dataset=ade20k_shards", "model=vit_tiny_patch16_224", "pretrained=false", "model_kwargs.embed_dim=32",
        "model_kwargs.depth=4", "model_kwargs.num_heads=2", "head=linear", "head_kwargs={}",
        f"data_dir={tmp_path / 'shards'}", "image_size=32", "eval_mode=whole", "batch_size=2", "steps=2",
        "warmup_steps=1", "eval_interval=2", "num_workers=0", "progress=false", f"out_dir={tmp_path / 'run'}"])
    result = train(config)
    assert result["step"] == 2 and len(result["iou_per_class"]) == 150
    assert main(["shards", "fashion_mnist_scenes", str(tmp_path / "x")]) == 2  # in memory: a clear refusal


def test_one_owner_per_stage(tmp_path):
    """Encoded ADE20K: SegCrop in the workers does every random stage, the device only normalises; in-memory scenes:
    the device flips image and mask together."""
    from vitlab.train.distributed import DistInfo
    from vitlab.train.tasks.segmentation import build_segmentation_task

    write_ade(tmp_path / "data")
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    ade = build_segmentation_task(apply_overrides(get_preset("ade20k_crate_alpha_b16_upernet"), [
        f"data_dir={tmp_path / 'data'}", "image_size=32", "batch_size=2", "num_workers=0"]), info)
    crop = ade.train.dataset.crop
    assert crop.train and crop.hflip and crop.photometric and crop.scale == (128, 32) and not ade.transform.hflip
    assert not ade.eval.dataset.crop.train
    scenes = build_segmentation_task(apply_overrides(get_preset("fashion_scenes_vit_linear"), TINY), info)
    assert scenes.transform.hflip
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    masks = images[:, 0].clone()  # a mask equal to the image: any flip must move both the same way
    x, y = scenes.transform(images, masks, generator=torch.Generator().manual_seed(0))
    restored = (x * scenes.transform.std + scenes.transform.mean).round().long()[:, 0]
    assert torch.equal(restored, y) and 0 < (y[:, 0, 0] == 3).sum() < 64  # flipped some, not all, both together
