"""The encoded-image path: one owner per augmentation stage, WebDataset shards (write, read, order, errors), the
encoded loader's rank / worker split and exact resume, and training from ImageFolder trees and shards (kill -9)."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import tar_bytes
from PIL import Image

from vitlab.data.segmentation import is_segmentation_dataset
from vitlab.data import (DatasetFormatError, DecodeCrop, ImageFolderDataset, MissingFileError, ShardDataset,
                         TensorImageDataset, load_dataset, write_shards)
from vitlab.data.augment import AugmentConfig
from vitlab.data.loader import EncodedLoader
from vitlab.data.shards import buffered_order, expand_shard_urls, index_shard
from vitlab.train import TrainConfig, get_preset, train
from vitlab.train.tasks.classification import config_plan, plan_augmentation
from vitlab.train.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def write_photos(root: Path, per_class=(8, 8, 8), size=(50, 40), seed: int = 0) -> Path:
    """root/c<k>/<i>.jpg: noisy images whose channel k is bright (learnable), JPEG quality 90."""
    rng = np.random.default_rng(seed)
    for k, n in enumerate(per_class):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 70, (size[1], size[0], 3)).astype(np.uint8)
            pixels[..., k] += 150
            Image.fromarray(pixels).save(root / f"c{k}" / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    write_photos(tmp_path / "images" / "train", (8, 8, 8))
    write_photos(tmp_path / "images" / "val", (3, 3, 3), seed=1)
    return tmp_path / "images"


def tiny_config(**overrides) -> TrainConfig:
    config = TrainConfig(model="vit_tiny_patch4_32", model_kwargs=dict(embed_dim=32, depth=2, num_heads=2),
                         image_size=32, eval_split="val", batch_size=4, epochs=1, num_workers=0, progress=False,
                         log_every=1, augment=AugmentConfig(random_resized_crop=True, hflip=True), lr=1e-3)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# one owner per stage
def test_no_preset_crops_twice_and_encoded_data_is_cropped_by_the_decoder():
    for name in PRESETS:
        config = get_preset(name)
        if config.dataset in ("tinyshakespeare", "wikitext2", "wikitext103", "openwebtext") or \
                config.dataset.startswith("textfile:"):
            continue
        if is_segmentation_dataset(config.dataset):  # one owner by construction: SegCrop (tests/test_seg_train.py)
            continue
        for dataset in (config.dataset, "shards"):  # as written, and pointed at shards (dataset=shards)
            config.dataset = dataset
            plan = config_plan(config)
            assert len(plan.random_crops()) <= 1, (name, dataset, plan.stages())
            if plan.train_decode is not None:  # ImageNet, Flowers, Pets, shards ...: the decoder owns the crop
                assert not plan.device.random_resized_crop, name
                assert plan.train_decode.train == config.augment.random_resized_crop
                assert plan.train_decode.scale == tuple(config.augment.rrc_scale)
    folder = plan_augmentation(get_preset("crate_alpha_in21k_pretrain").augment, encoded=True, image_size=224)
    assert folder.random_crops() == [("random_resized_crop", "decoder")]
    assert folder.train_decode.scale == (0.08, 1.0)  # the official inception crop, area_min 8%
    memory = plan_augmentation(get_preset("cifar10_vit_tiny_mimetic").augment, encoded=False, image_size=None)
    assert memory.random_crops() == [("random_resized_crop", "device")] and memory.train_decode is None


def test_an_imagefolder_batch_is_cropped_exactly_once(folder, monkeypatch):
    """Counts the crops that really run for one training batch: one decoder crop per image, none on the device."""
    import kornia.augmentation as K

    import vitlab.data.decode as decode
    from vitlab.train.tasks import build_task as build_data
    from vitlab.train.distributed import DistInfo

    calls = {"decoder": 0, "device": 0}
    box = decode.random_resized_crop_box

    def counted_box(*args, **kwargs):
        calls["decoder"] += 1
        return box(*args, **kwargs)

    forward = K.RandomResizedCrop.forward

    def counted_forward(self, *args, **kwargs):
        calls["device"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(decode, "random_resized_crop_box", counted_box)
    monkeypatch.setattr(K.RandomResizedCrop, "forward", counted_forward)
    config = tiny_config(dataset="imagefolder", data_dir=str(folder))
    data = build_data(config, DistInfo(0, 1, 0, torch.device("cpu")))
    images, labels = next(iter(data.train))
    x, targets = data.augment(images, labels, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and calls == {"decoder": 4, "device": 0}


# ---------------------------------------------------------------------------------------------------------------
# the streamed order
def test_buffered_order_is_a_seeded_permutation_that_streams():
    sizes = [7, 5, 9, 3]
    order = buffered_order(sizes, 4, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(24))
    assert np.array_equal(order, buffered_order(sizes, 4, np.random.default_rng(1)))
    assert not np.array_equal(order, buffered_order(sizes, 4, np.random.default_rng(2)))
    # streaming: the i-th emitted sample has entered the buffer, i.e. is among the first i + buffer of the stream
    stream = buffered_order(sizes, 1, np.random.default_rng(1))  # buffer 1: the shard order itself
    rank = {int(s): i for i, s in enumerate(stream)}
    assert all(rank[int(s)] < i + 4 for i, s in enumerate(order))
    starts = np.cumsum([0] + sizes)
    for s in range(4):  # without a buffer each shard is read in order, contiguously
        block = stream[(stream >= starts[s]) & (stream < starts[s + 1])]
        assert np.array_equal(block, np.arange(starts[s], starts[s + 1]))


def test_ranks_and_workers_split_without_overlap_and_workers_do_not_change_batches(folder):
    dataset = load_dataset("imagefolder", "train", data_dir=folder, decode_crop=DecodeCrop(16, train=True))
    per_rank = [EncodedLoader(dataset, 3, True, True, "cpu", seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [i for loader in per_rank for batch in loader.batches(0) for i, _ in batch]
    assert len(seen) == len(set(seen)) == 24 - 24 % 6 and len(per_rank[0]) == len(per_rank[1]) == 4
    assert per_rank[0].batches(0) != per_rank[0].batches(1)  # a new order every epoch
    zero = [(x.clone(), y.clone()) for x, y in EncodedLoader(dataset, 3, True, True, "cpu", seed=5, num_workers=0)]
    two = list(EncodedLoader(dataset, 3, True, True, "cpu", seed=5, num_workers=2))
    assert len(zero) == len(two) == 8
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(zero, two))


def test_loader_resumes_mid_epoch_exactly(folder):
    dataset = load_dataset("imagefolder", "train", data_dir=folder, decode_crop=DecodeCrop(16, train=True))
    loader = EncodedLoader(dataset, 4, True, True, "cpu", seed=3)
    uninterrupted = [x for x, _ in loader] + [x for x, _ in loader]  # epochs 0 and 1
    first = EncodedLoader(dataset, 4, True, True, "cpu", seed=3)
    taken = []
    for x, _ in first:
        taken.append(x)
        if len(taken) == 4:
            break
    state = first.state_dict()
    again = EncodedLoader(dataset, 4, True, True, "cpu", seed=3)
    again.load_state_dict(state)
    rest = [x for x, _ in again]
    again.set_epoch(1)
    rest += [x for x, _ in again]
    assert len(taken) + len(rest) == len(uninterrupted) == 12
    assert all(torch.equal(a, b) for a, b in zip(taken + rest, uninterrupted))
    with pytest.raises(ValueError, match=r"global batch of 4 \(4 per rank x 1 rank\(s\)\) but this loader has 2"):
        EncodedLoader(dataset, 2, True, True, "cpu", seed=3).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------
# writing and reading shards
def test_shards_round_trip_an_in_memory_dataset_losslessly(tmp_path):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (23, 1, 12, 12), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 4, 23))
    source = TensorImageDataset(images, labels, ["a", "b", "c", "d"], "toy", (0.5,), (0.25,))
    out = write_shards(source, tmp_path / "toy", prefix="train", shard_size=10, seed=7, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert [s["nsamples"] for s in index["shardlist"]] == [10, 10, 3] and index["__kind__"] == "wids-shard-index-v1"
    assert index["vitlab"]["classes"] == ["a", "b", "c", "d"] and index["vitlab"]["mean"] == [0.5] * 3
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    assert sorted(names[:3]) == [f"{names[0].split('.')[0]}.{ext}" for ext in ("cls", "json", "png")]
    shards = ShardDataset.from_spec(str(out), None, DecodeCrop(12, train=False, crop_pct=1.0))
    assert len(shards) == 23 and shards.classes == source.classes and shards.mean == (0.5, 0.5, 0.5)
    for i in range(len(shards)):  # keys are the source indices: every image and label comes back exactly
        key = int(shards.source(i)[2].split("'")[1])
        image, label = shards[i]
        assert label == int(labels[key]) and torch.equal(image, images[key].expand(3, -1, -1))
    with pytest.raises(FileExistsError, match="index.json exists"):
        write_shards(source, tmp_path / "toy", prefix="train")
    # a changed shard is indexed again from its tar, not trusted from index.npz
    assert ShardDataset.from_spec("toy", tmp_path, DecodeCrop(12)).subset(12).shard_sizes == [10, 2]


def test_vitlab_shards_cli_and_foreign_shards_by_brace_pattern(folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "vitlab", "shards", "imagefolder", str(tmp_path / "out"),
                           "--data-dir", str(folder), "--split", "train,val", "--shard-size", "10"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "24 samples, 3 classes" in done.stdout and "9 samples, 3 classes" in done.stdout
    train = load_dataset("shards", "train", data_dir=tmp_path / "out", image_size=16)
    assert train.shard_sizes == [10, 10, 4] and train.classes == ["c0", "c1", "c2"] and train.train
    # the JPEG bytes are the original files', not re-encoded
    original = {str(p): p.read_bytes() for p in (folder / "train").rglob("*.jpg")}
    member = json.loads(tarfile.open(train.shards[0].path).extractfile(f"{train.shards[0].keys[0]}.json").read())
    assert train.source(0)[0] == original[member["source"]]
    # shards written by someone else (no index files), named by a brace pattern
    for name in ("index.json", "index.npz"):
        (tmp_path / "out" / "train" / name).unlink()
    pattern = "out/train/train-{000000..000002}.tar"
    assert expand_shard_urls(pattern, tmp_path)[1] == str(tmp_path / "out/train/train-000001.tar")
    foreign = load_dataset("shards", pattern, data_dir=tmp_path, image_size=16)
    assert len(foreign) == 24 and foreign.num_classes == 3 and foreign.targets == train.targets
    with pytest.raises(ValueError, match="only local paths"):
        expand_shard_urls("https://example.org/train-{0..3}.tar")


def _shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.write_bytes(tar_bytes({f"{key}.{ext}": data for key, members in samples for ext, data in members.items()}))
    return path


def _jpeg(value: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (value, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bad_shards_raise_naming_the_file_or_are_counted_and_skipped(tmp_path):
    good = [(f"s{i}", {"jpg": _jpeg(i * 20), "cls": str(i % 2).encode()}) for i in range(6)]
    a = _shard(tmp_path / "a.tar", good)
    data = a.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    _shard(tmp_path / "corrupt.tar", good[:2] + [("bad", {"jpg": b"\xff\xd8 not a jpeg", "cls": b"1"})])
    _shard(tmp_path / "nolabel.tar", good[:2] + [("lonely", {"jpg": _jpeg(5)})])
    crop = DecodeCrop(8)
    with pytest.raises(DatasetFormatError, match=r"cut\.tar: truncated or corrupt tar after member .*data_errors=skip"):
        index_shard(tmp_path / "cut.tar")
    with pytest.warns(UserWarning, match="cut.tar: truncated"):
        kept = index_shard(tmp_path / "cut.tar", "skip")
    assert 0 < len(kept) < 6 and kept.keys == [f"s{i}" for i in range(len(kept))]
    with pytest.raises(DatasetFormatError, match=r"nolabel\.tar: sample 'lonely' has no a label"):
        index_shard(tmp_path / "nolabel.tar")
    with pytest.raises(MissingFileError, match=r"1 of 2 shards are missing: .*gone\.tar"):
        ShardDataset([str(a), str(tmp_path / "gone.tar")], crop)
    with pytest.warns(UserWarning, match="skipped 1 missing shard"):
        assert len(ShardDataset([str(a), str(tmp_path / "gone.tar")], crop, on_error="skip")) == 6
    corrupt = ShardDataset([str(tmp_path / "corrupt.tar")], crop)
    loader = EncodedLoader(corrupt, 3, False, False, "cpu", num_workers=1)
    with pytest.raises(DatasetFormatError, match=r"corrupt\.tar: sample 'bad': unreadable image") as err:
        list(loader)
    assert "Traceback" not in str(err.value)  # the worker's traceback is not pasted into the message
    skipping = EncodedLoader(ShardDataset([str(tmp_path / "corrupt.tar")], crop, on_error="skip"), 3, False, False,
                             "cpu")
    with pytest.warns(UserWarning, match="skipped: .*'bad'"):
        batches = list(skipping)
    assert [len(y) for _, y in batches] == [2] and skipping.skipped == 1


def test_train_subset_and_eval_subset_apply_to_every_dataset_kind(folder, tmp_path):
    from vitlab.train.tasks import build_task as build_data
    from vitlab.train.distributed import DistInfo

    write_shards(load_dataset("imagefolder", "train", data_dir=folder), tmp_path / "s" / "train", prefix="train",
                 shard_size=5, progress=False)
    write_shards(load_dataset("imagefolder", "val", data_dir=folder), tmp_path / "s" / "val", prefix="val",
                 progress=False)
    cpu = DistInfo(0, 1, 0, torch.device("cpu"))
    for dataset, data_dir in (("imagefolder", folder), ("shards", tmp_path / "s")):
        data = build_data(tiny_config(dataset=dataset, data_dir=str(data_dir), train_subset=10, eval_subset=4), cpu)
        assert (data.train_size, data.eval_size) == (10, 4), dataset
    folder_subset = load_dataset("imagefolder", "train", data_dir=folder).subset(9)
    assert len(set(folder_subset.targets)) == 3  # a fixed-seed draw, not the first class only


# ---------------------------------------------------------------------------------------------------------------
# training
def test_one_epoch_on_an_imagefolder_learns(folder, tmp_path):
    result = train(tiny_config(dataset="imagefolder", data_dir=str(folder), epochs=4, num_workers=2,
                               out_dir=str(tmp_path / "run")))
    assert result["step"] == 24 and result["top1"] > 60  # three colour classes, 9 validation images
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()


def _train_argv(out_dir: Path, shards: Path) -> list[str]:
    return [sys.executable, "-m", "vitlab", "train", "fashion_mnist_vit", "dataset=shards", f"data_dir={shards}",
            "train_split=train", "eval_split=val", "image_size=32", "model=vit_tiny_patch4_32",
            "model_kwargs={'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'patch_size': 8}", "batch_size=4",
            "epochs=3", "eval_interval=4", "log_every=1", "num_workers=2", "shuffle_buffer=8",
            "augment.random_resized_crop=true", "augment.hflip=true", "warmup_epochs=0.5", "progress=false",
            "device=cpu", f"out_dir={out_dir}"]


def test_shard_training_killed_mid_epoch_resumes_to_the_same_metrics(folder, tmp_path):
    """write shards → train → kill -9 right after a mid-epoch checkpoint → resume: every logged loss and every
    evaluation equal the uninterrupted run's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    shards = tmp_path / "shards"
    for split in ("train", "val"):
        write_shards(load_dataset("imagefolder", split, data_dir=folder), shards / split, prefix=split,
                     shard_size=5, progress=False)
    whole = subprocess.run(_train_argv(tmp_path / "whole", shards), capture_output=True, text=True, env=env,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = subprocess.Popen(_train_argv(tmp_path / "killed", shards), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "last" / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = records(tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "last" / "meta.json").read_text())["step"] == 4  # epoch 0 of 3 is 6 steps
    assert max(r["step"] for r in before) < 18  # killed before the end: the resume has work to do
    resumed = subprocess.run(_train_argv(tmp_path / "killed", shards), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 4" in resumed.stdout

    def by_step(rows, key):
        return {r["step"]: r[key] for r in rows if key in r}

    for key in ("train_loss", "eval_loss", "top1", "lr"):
        expected = by_step(records(tmp_path / "whole"), key)
        assert by_step(records(tmp_path / "killed"), key) == expected, key
    assert len(by_step(records(tmp_path / "whole"), "eval_loss")) == 5  # steps 4, 8, 12, 16, 18


def test_check_data_names_every_unreadable_image_before_training(folder, tmp_path):
    """`vitlab check-data`: a bad training file and a truncated validation JPEG are both named (the validation one
    would otherwise surface only at the first evaluation); a clean tree passes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def check(data_dir) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vitlab", "check-data", "imagefolder", "--data-dir", str(data_dir),
                               "--workers", "2"], capture_output=True, text=True, env=env, timeout=120)

    clean = check(folder)
    assert clean.returncode == 0, clean.stderr
    assert "train: 24 images, 0 unreadable" in clean.stdout and "val: 9 images" in clean.stdout
    (folder / "train" / "c1" / "3.jpg").write_bytes(b"not an image")
    jpeg = (folder / "val" / "c2" / "0.jpg").read_bytes()
    (folder / "val" / "c2" / "0.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    bad = check(folder)
    assert bad.returncode == 1, bad.stderr
    assert "train: 24 images, 1 unreadable" in bad.stdout and "c1/3.jpg: unreadable image" in bad.stdout
    assert "val: 9 images, 1 unreadable" in bad.stdout and "c2/0.jpg: unreadable image" in bad.stdout
    assert "data_errors=skip" in bad.stderr and "Traceback" not in bad.stderr


def test_a_decompression_bomb_is_named_and_refused_in_the_main_process(folder, monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # the 50 x 40 fixture images are now "bombs"
    dataset = load_dataset("imagefolder", "train", data_dir=folder, decode_crop=DecodeCrop(16, train=True))
    with pytest.raises(DatasetFormatError, match=r"c\d/\d\.jpg: unreadable image: .*2000 pixels") as err:
        list(EncodedLoader(dataset, 4, True, True, "cpu", num_workers=0))
    assert "Traceback" not in str(err.value)
