"""Segmentation data: the ADE20K reader on fixtures in the published layout (pairs, reduce_zero_label, root at either
level, every bad-input error naming its file), `SegCrop` (shapes, seeding, image/mask alignment through rescale, crop
and flip, mmseg's category-ratio crop rule, padding, eval sizes), `EncodedLoader` batches, segmentation shards."""
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from data_fixtures import PREFIX, SIZES, write_ade

from vitlab.data import (DatasetFormatError, DatasetNotFoundError, MissingFileError, load_segmentation_dataset)
from vitlab.data.loader import EncodedLoader
from vitlab.data.segmentation import (ADE20K_CLASSES, ADE20K_PALETTE, SEGMENTATION_DATASETS, ADE20KDataset, SegCrop,
                                      SegmentationShardDataset, is_segmentation_dataset, write_segmentation_shards)

SMALL_EVAL = SegCrop(size=32, train=False, scale=(64, 32))
SMALL_TRAIN = SegCrop(size=32, train=True, scale=(64, 32))


@pytest.fixture
def ade(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_ade(tmp_path)


def ann(base: Path, split: str, i: int) -> Path:
    return base / "ADEChallengeData2016" / "annotations" / split / f"{PREFIX[split]}{i:08d}.png"


def img(base: Path, split: str, i: int) -> Path:
    return base / "ADEChallengeData2016" / "images" / split / f"{PREFIX[split]}{i:08d}.jpg"


# ------------------------------------------------------------------------------------------------ the reader
def test_reader_pairs_files_and_reduces_zero_label(ade):
    base, masks = ade
    data = ADE20KDataset(base, "validation", SMALL_EVAL)
    assert len(data) == 2 and data.num_classes == 150 and data.ignore_index == 255 and data.in_chans == 3
    assert data.classes[:5] == ["wall", "building", "sky", "floor", "tree"] and data.classes[-1] == "flag"
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150 and ADE20K_PALETTE[0] == (120, 120, 120)
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    assert [Path(p).name for p, _ in data.files] == ["validation", "validation"]
    for i, stem in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        assert Path(data.source(i)[0]).name == f"{stem}.jpg" and Path(data.source(i)[1]).name == f"{stem}.png"
        _, mask = data[i]
        stored = masks[stem]
        assert mask.dtype == torch.uint8 and mask.shape == stored.shape
        expected = np.where(stored == 0, 255, stored.astype(np.int64) - 1)
        assert np.array_equal(mask.numpy(), expected)
        assert (mask == 255).any() and (mask == 149).any() and int(mask[mask != 255].max()) <= 149


def test_root_at_either_level_and_split_aliases(ade):
    base, _ = ade
    outer = ADE20KDataset(base, "train", SMALL_EVAL)
    inner = ADE20KDataset(base / "ADEChallengeData2016", "training", SMALL_EVAL)
    assert outer.pairs == inner.pairs and len(outer) == 4
    assert len(ADE20KDataset(base, "val", SMALL_EVAL)) == 2
    with pytest.raises(ValueError, match="no split 'test'"):
        ADE20KDataset(base, "test", SMALL_EVAL)


def test_missing_root_and_folder_name_what_was_expected(ade, tmp_path):
    base, _ = ade
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'elsewhere'}.*ADEChallengeData2016"):
        ADE20KDataset(tmp_path / "elsewhere", "training")
    for path in sorted((base / "ADEChallengeData2016" / "annotations" / "validation").iterdir()):
        path.unlink()
    (base / "ADEChallengeData2016" / "annotations" / "validation").rmdir()
    with pytest.raises(MissingFileError, match=r"annotations/validation.*\*\.png"):
        ADE20KDataset(base, "validation")


@pytest.mark.parametrize("which", ["image", "annotation"])
def test_unpaired_file_is_named(ade, which):
    base, _ = ade
    gone, named = (ann, img) if which == "image" else (img, ann)
    gone(base, "training", 3).unlink()
    with pytest.raises(MissingFileError, match=named(base, "training", 3).name) as info:
        ADE20KDataset(base, "training")
    assert gone(base, "training", 3).name in str(info.value)  # and says which file was expected
    with pytest.warns(UserWarning, match=named(base, "training", 3).name):
        assert len(ADE20KDataset(base, "training", on_error="skip")) == 3


def _break(base: Path, case: str) -> Path:
    """Spoils sample 2 of the training split; returns the file the error must name."""
    if case == "size":
        Image.fromarray(np.ones((10, 12), np.uint8)).save(ann(base, "training", 2))
    elif case == "value":
        mask = np.array(Image.open(ann(base, "training", 2)))
        mask[3, 4] = 151
        Image.fromarray(mask).save(ann(base, "training", 2))
    elif case == "rgb_mask":
        Image.fromarray(np.zeros((72, 40, 3), np.uint8)).save(ann(base, "training", 2))
    elif case == "bad_image":
        img(base, "training", 2).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif case == "bad_mask":
        ann(base, "training", 2).write_bytes(b"\x89PNG truncated")
    return img(base, "training", 2) if case == "bad_image" else ann(base, "training", 2)


@pytest.mark.parametrize("case, expected", [("size", "12 x 10.*40 x 72.*same size"), ("value", "151 outside 0 … 150"),
                                            ("rgb_mask", "mode RGB.*8-bit single-channel"),
                                            ("bad_image", "unreadable image"), ("bad_mask", "unreadable annotation")])
def test_bad_sample_error_names_the_file(ade, case, expected):
    base, _ = ade
    named = _break(base, case)
    data = ADE20KDataset(base, "training", SMALL_TRAIN)
    data[0], data[2]  # the good ones read
    with pytest.raises(DatasetFormatError, match=expected) as info:
        data[(1, 5)]
    assert str(named) in str(info.value)


def test_loader_raise_names_the_file_and_skip_leaves_it_out(ade):
    base, _ = ade
    named = _break(base, "bad_image")
    loader = EncodedLoader(ADE20KDataset(base, "training", SMALL_TRAIN), 2, False, False, "cpu")
    with pytest.raises(DatasetFormatError, match=str(named)):
        list(loader)
    skipping = EncodedLoader(ADE20KDataset(base, "training", SMALL_TRAIN, "skip"), 2, False, False, "cpu")
    with pytest.warns(UserWarning, match=str(named)):
        batches = list(skipping)
    assert [len(masks) for _, masks in batches] == [1, 2] and skipping.skipped == 1


# ------------------------------------------------------------------------------------------------ the transform
def test_train_items_shapes_determinism_and_seeds(ade):
    base, _ = ade
    data = ADE20KDataset(base, "training", SMALL_TRAIN)
    image, mask = data[(1, 7)]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.uint8 and mask.shape == (32, 32)
    again = data[(1, 7)]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1])
    others = [data[(1, seed)] for seed in range(8, 12)]
    assert any(not torch.equal(mask, m) for _, m in others) and any(not torch.equal(image, i) for i, _ in others)
    assert torch.equal(data[1][0], data[(1, 0)][0])  # dataset[index] means seed 0


def blocky_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask of 6 x 6 blocks of distinct labels (asymmetric left / right) and an image whose three channels are
    the mask: after any correct joint transform the image still spells out the mask."""
    rng = np.random.default_rng(seed)
    blocks = rng.permutation(150)[: -(-height // 6) * -(-width // 6)].reshape(-(-height // 6), -(-width // 6))
    mask = np.kron(blocks, np.ones((6, 6), np.int64))[:height, :width].astype(np.uint8)
    return np.repeat(mask[:, :, None], 3, axis=2), mask


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood holds one label (bilinear resizing is exact there); the border never (its
    neighbours outside the crop are unknown)."""
    pad = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    same = np.ones(mask.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= pad[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    return same


def test_image_and_mask_stay_aligned_through_rescale_crop_and_flip():
    image, mask = blocky_pair(60, 90, seed=0)
    crop = SegCrop(size=32, train=True, scale=(90, 60), ratio_range=(0.5, 1.5), photometric=False)
    unflipped = SegCrop(size=32, train=True, scale=(90, 60), ratio_range=(0.5, 1.5), photometric=False, hflip=False)
    flips = 0
    for seed in range(20):
        out_image, out_mask = (t.numpy() for t in crop.apply(image, mask, random.Random(seed)))
        labelled = (out_mask != 255) & interior(out_mask)
        assert labelled.sum() > 100
        assert np.array_equal(out_image[0][labelled], out_mask[labelled]), seed
        plain_mask = unflipped.apply(image, mask, random.Random(seed))[1].numpy()
        flipped = not np.array_equal(plain_mask, out_mask)
        assert not flipped or np.array_equal(plain_mask[:, ::-1], out_mask) or (out_mask == 255).any()
        flips += flipped
    assert 3 <= flips <= 17  # both branches of the p = 0.5 flip were exercised


def test_photometric_distortion_changes_the_image_only():
    image, mask = blocky_pair(60, 90, seed=1)
    with_photo = SegCrop(size=32, train=True, scale=(90, 60))
    without = SegCrop(size=32, train=True, scale=(90, 60), photometric=False)
    changed = 0
    for seed in range(6):
        a_image, a_mask = with_photo.apply(image, mask, random.Random(seed))
        b_image, b_mask = without.apply(image, mask, random.Random(seed))
        assert torch.equal(a_mask, b_mask)
        changed += not torch.equal(a_image, b_image)
        again = with_photo.apply(image, mask, random.Random(seed))[0]
        assert torch.equal(a_image, again)
    assert changed >= 3


def test_crop_respects_cat_max_ratio_when_a_valid_crop_exists():
    # label 3 on columns 0..39, label 7 on 40..63: a 32 x 32 crop at left offset l holds max(0, l - 8) columns of
    # label 7, valid (dominant share < 0.75) for l in 17..31, 15 of the 33 offsets
    mask = np.full((32, 64), 3, np.uint8)
    mask[:, 40:] = 7
    image = np.repeat(mask[:, :, None], 3, axis=2)
    kwargs = dict(size=32, train=True, scale=(64, 32), ratio_range=(1.0, 1.0), hflip=False, photometric=False)

    def dominant_share(crop: SegCrop, seed: int) -> float:
        out = crop.apply(image, mask, random.Random(seed))[1].numpy()
        counts = np.bincount(out.ravel(), minlength=256)[:255]
        return counts.max() / counts.sum()

    assert all(dominant_share(SegCrop(cat_max_ratio=0.75, **kwargs), seed) < 0.75 for seed in range(30))
    assert sum(dominant_share(SegCrop(cat_max_ratio=1.0, **kwargs), seed) >= 0.75 for seed in range(30)) >= 5


def test_padding_uses_ignore_index_and_black():
    image, mask = blocky_pair(12, 20, seed=2)
    crop = SegCrop(size=32, train=True, scale=(20, 12), ratio_range=(1.0, 1.0), hflip=False, photometric=False)
    out_image, out_mask = (t.numpy() for t in crop.apply(image, mask, random.Random(0)))
    assert np.array_equal(out_mask[:12, :20], mask) and np.array_equal(out_image[:, :12, :20], image.transpose(2, 0, 1))
    assert (out_mask[12:] == 255).all() and (out_mask[:, 20:] == 255).all()
    assert (out_image[:, 12:] == 0).all() and (out_image[:, :, 20:] == 0).all()
    other = SegCrop(size=32, train=True, scale=(20, 12), ratio_range=(1.0, 1.0), ignore_index=200, hflip=False,
                    photometric=False)
    assert (other.apply(image, mask, random.Random(0))[1][12:] == 200).all()


def test_eval_keeps_the_mask_size_and_fits_the_image_inside_scale(ade):
    base, masks = ade
    data = ADE20KDataset(base, "training", SegCrop(size=32, train=False, scale=(64, 32)))
    for i, (w, h) in enumerate(SIZES["training"]):
        image, mask = data[i]
        assert mask.shape == (h, w)  # the annotation's own resolution
        new_h, new_w = image.shape[1:]
        assert max(new_h, new_w) <= 64 and min(new_h, new_w) <= 32
        assert max(new_h, new_w) == 64 or min(new_h, new_w) == 32
        assert abs(new_w / new_h - w / h) < 0.05  # aspect ratio kept
    assert tuple(data[0][0].shape) == (3, 32, 43)  # 64 x 48 → factor 2/3 → 43 x 32, mmcv's rounding


# ------------------------------------------------------------------------------------------------ loader, dispatch
def test_encoded_loader_batches(ade):
    base, _ = ade
    loader = EncodedLoader(ADE20KDataset(base, "training", SMALL_TRAIN), batch_size=2, shuffle=True, drop_last=True,
                           device="cpu", seed=3, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2
    for images, masks in batches:
        assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)
        assert masks.dtype == torch.int64 and masks.shape == (2, 32, 32)
        labels = masks.unique()
        assert ((labels <= 149) | (labels == 255)).all()


def test_load_segmentation_dataset_dispatch(ade):
    base, _ = ade
    data = load_segmentation_dataset("ade20k", "val", data_dir=base)
    assert isinstance(data, ADE20KDataset) and len(data) == 2 and not data.train and data.crop.size == 512
    assert load_segmentation_dataset("ade20k", "train", data_dir=base).train
    assert is_segmentation_dataset("ade20k") and not is_segmentation_dataset("cifar10")
    assert set(SEGMENTATION_DATASETS) == {"ade20k", "ade20k_shards", "fashion_mnist_scenes"}
    with pytest.raises(ValueError, match="valid: ade20k, ade20k_shards, fashion_mnist_scenes"):
        load_segmentation_dataset("ade21k", "train", data_dir=base)
    sub = data.subset(1)
    assert len(sub) == 1 and sub.pairs[0] in data.pairs and data.subset(1).pairs == sub.pairs


# ------------------------------------------------------------------------------------------------ shards
def test_shards_round_trip(ade, tmp_path):
    base, _ = ade
    folder = ADE20KDataset(base, "training", SMALL_EVAL)
    out = write_segmentation_shards(folder, tmp_path / "shards" / "training", shard_size=3)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    shards = load_segmentation_dataset("ade20k_shards", "train", data_dir=tmp_path / "shards", crop=SMALL_EVAL)
    assert isinstance(shards, SegmentationShardDataset) and shards.shard_sizes == [3, 1]
    assert shards.classes == folder.classes and [tuple(c) for c in shards.palette] == list(ADE20K_PALETTE)
    seen = []
    for i in range(len(shards)):
        shard, row = shards.shards[0 if i < 3 else 1], i if i < 3 else i - 3
        original = int(shard.keys[row])
        seen.append(original)
        for a, b in zip(shards[i], folder[original]):
            assert torch.equal(a, b)
    assert sorted(seen) == [0, 1, 2, 3]
    train = SegmentationShardDataset.from_folder(out, SMALL_TRAIN)
    images, masks = next(iter(EncodedLoader(train, 2, True, True, "cpu", shuffle_buffer=2)))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32) and masks.dtype == torch.int64


def test_shard_errors_name_shard_and_key(ade, tmp_path):
    base, _ = ade
    out = write_segmentation_shards(ADE20KDataset(base, "validation", SMALL_EVAL), tmp_path / "s", shard_size=5)
    tar_path = out / "shard-000000.tar"
    data = tar_path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="cut.tar: truncated"):
        SegmentationShardDataset([str(tmp_path / "cut.tar")], SMALL_EVAL, list(ADE20K_CLASSES), [])
    with tarfile.open(tar_path) as src, tarfile.open(tmp_path / "nomask.tar", "w") as dst:
        for member in src.getmembers():
            if not member.name.endswith(".seg.png") or member.name.startswith("000000000."):
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(DatasetFormatError, match="nomask.tar: sample '000000001' has no mask"):
        SegmentationShardDataset([str(tmp_path / "nomask.tar")], SMALL_EVAL, list(ADE20K_CLASSES), [])
    (out / "index.json").write_text('{"shardlist": [], "vitlab": {"classes": ["a"]}}')
    with pytest.raises(DatasetFormatError, match="expected 'segmentation'"):
        SegmentationShardDataset.from_folder(out, SMALL_EVAL)
