"""vitlab.data.scenes: Fashion-MNIST scenes for semantic segmentation, built from the real Fashion-MNIST files in
../shared/data/fashion-mnist (a skip there fails under CI=true, see conftest.py), plus occlusion on hand-made items."""
from pathlib import Path

import numpy as np
import pytest
import torch

import vitlab
from vitlab.data import load_dataset
from vitlab.data.scenes import (IGNORE_INDEX, SILHOUETTE_THRESHOLD, STATS_SCENES, SegmentationTensorDataset,
                                fashion_mnist_scenes, make_scenes, paste_items, scene_layout)

FASHION = Path(vitlab.__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="../shared/data/fashion-mnist is absent")


@pytest.fixture(scope="module")
def fashion():
    """{'train': ..., 'test': ...} Fashion-MNIST splits, read once."""
    return {split: load_dataset("fashion_mnist", split, data_dir=str(FASHION)) for split in ("train", "test")}


# ---------------------------------------------------------------- hand-made items: occlusion and threshold
def _two_items():
    """Item A (class 0): a solid 28x28 square of value 100. Item B (class 3): a 10x10 block of 200 at rows/cols
    5..14, zero elsewhere (transparent), with one pixel of 15 (below the threshold) and one of 16 (at it)."""
    item_a = np.full((28, 28), 100, np.uint8)
    item_b = np.zeros((28, 28), np.uint8)
    item_b[5:15, 5:15] = 200
    item_b[20, 20], item_b[21, 21] = SILHOUETTE_THRESHOLD - 1, SILHOUETTE_THRESHOLD
    return item_a, item_b


def _paste(order):
    item_a, item_b = _two_items()
    scenes, masks = np.zeros((1, 40, 40), np.uint8), np.zeros((1, 40, 40), np.uint8)
    layers = {"a": (item_a, 0, (0, 0)), "b": (item_b, 3, (4, 4))}
    for name in order:  # one paste_items call per layer, in drawing order
        item, label, position = layers[name]
        paste_items(scenes, masks, item[None], np.array([label]), np.array([position]), scene_index=np.array([0]))
    return scenes[0], masks[0]


def test_a_later_item_occludes_an_earlier_one_only_on_its_silhouette():
    scene, mask = _paste("ab")
    b_block = (slice(9, 19), slice(9, 19))  # B's 200-block at (4, 4) + (5..14)
    assert (mask[b_block] == 4).all() and (scene[b_block] == 200).all()  # B on top: class 3 -> label 4
    a_only = np.zeros((40, 40), bool)
    a_only[:28, :28] = True
    a_only[b_block] = False
    a_only[25, 25] = False  # B's pixel of 16 (at (4, 4) + (21, 21)) is silhouette too
    assert (mask[a_only] == 1).all() and (scene[a_only] == 100).all()  # B's transparent pixels keep A
    assert mask[24, 24] == 1 and scene[24, 24] == 100  # B's pixel of 15 is below the threshold: A shows
    assert mask[25, 25] == 4 and scene[25, 25] == SILHOUETTE_THRESHOLD
    assert (mask[28:] == 0).all() and (scene[28:] == 0).all() and (mask[:, 28:32] == 0).all()


def test_drawing_order_decides_what_is_on_top():
    scene, mask = _paste("ba")
    assert (mask[:28, :28] == 1).all() and (scene[:28, :28] == 100).all()  # A covers B entirely
    scene, mask = _paste("b")
    assert mask[24, 24] == 0 and scene[24, 24] == 0  # alone: the pixel of 15 is background, in image and mask
    assert int((mask == 4).sum()) == 101 and int((scene > 0).sum()) == 101  # 10x10 block + the pixel of 16


def test_paste_items_refuses_items_outside_the_canvas_and_repeated_scenes():
    item_a, _ = _two_items()
    scenes, masks = np.zeros((2, 40, 40), np.uint8), np.zeros((2, 40, 40), np.uint8)
    with pytest.raises(ValueError, match=r"top in 0\.\.12"):
        paste_items(scenes, masks, item_a[None], np.array([0]), np.array([[13, 0]]))
    with pytest.raises(ValueError, match="distinct scene numbers"):
        paste_items(scenes, masks, np.stack([item_a, item_a]), np.array([0, 1]), np.zeros((2, 2), int),
                    scene_index=np.array([1, 1]))


def _reference_scenes(images, labels, count, canvas, items, seed):
    """A plain per-scene, per-item loop over `scene_layout`: the definition make_scenes must match."""
    counts, picks, positions = scene_layout(count, len(images), canvas, images.shape[-2:], items, seed)
    scenes, masks = np.zeros((count, canvas, canvas), np.uint8), np.zeros((count, canvas, canvas), np.uint8)
    for n in range(count):
        for slot in range(counts[n]):
            item, (top, left) = images[picks[n, slot], 0], positions[n, slot]
            silhouette = item >= SILHOUETTE_THRESHOLD
            scenes[n, top:top + 28, left:left + 28][silhouette] = item[silhouette]
            masks[n, top:top + 28, left:left + 28][silhouette] = labels[picks[n, slot]] + 1
    return scenes, masks


# ---------------------------------------------------------------- real Fashion-MNIST
@needs_fashion
def test_make_scenes_equals_the_plain_loop_on_real_items(fashion):
    images, labels = fashion["train"].images.numpy(), fashion["train"].labels.numpy()
    scenes, masks = make_scenes(images, labels, 60, canvas=48, items=(2, 5), seed=7)
    ref_scenes, ref_masks = _reference_scenes(images, labels, 60, 48, (2, 5), 7)
    assert scenes.shape == (60, 1, 48, 48) and masks.shape == (60, 48, 48)
    assert scenes.dtype == masks.dtype == torch.uint8
    assert np.array_equal(scenes[:, 0].numpy(), ref_scenes) and np.array_equal(masks.numpy(), ref_masks)
    counts, _, positions = scene_layout(60, len(images), 48, (28, 28), (2, 5), 7)
    assert counts.min() >= 2 and counts.max() <= 5 and positions.min() >= 0 and positions.max() <= 48 - 28


@needs_fashion
def test_scenes_are_deterministic_prefix_stable_and_differ_across_seeds(fashion):
    images, labels = fashion["train"].images, fashion["train"].labels
    scenes, masks = make_scenes(images, labels, 1500, seed=3)
    again, again_masks = make_scenes(images, labels, 1500, seed=3)
    assert torch.equal(scenes, again) and torch.equal(masks, again_masks)
    prefix, prefix_masks = make_scenes(images, labels, 1200, seed=3)  # crosses a 1000-scene block boundary
    assert torch.equal(prefix, scenes[:1200]) and torch.equal(prefix_masks, masks[:1200])
    other, _ = make_scenes(images, labels, 1500, seed=4)
    assert (other != scenes).flatten(1).any(1).float().mean() > 0.99  # nearly every scene differs


@needs_fashion
def test_masks_agree_with_images(fashion):
    scenes, masks = make_scenes(fashion["train"].images, fashion["train"].labels, 500, seed=1)
    image = scenes[:, 0]
    assert int(masks.max()) == 10 and int(masks.min()) == 0  # labels 0..10, all used in 500 scenes
    assert (image[masks == 0] == 0).all()  # background is black, noise below the threshold removed
    assert (image[masks > 0] >= SILHOUETTE_THRESHOLD).all()
    assert 0.6 < (masks == 0).float().mean() < 0.9  # 2..4 items of ~45% coverage on a 64x64 canvas


def _thresholded_keys(images):
    """bytes of each (28, 28) item with its sub-threshold pixels zeroed: what a lone item at (0, 0) becomes."""
    items = images[:, 0].numpy()
    items = np.where(items >= SILHOUETTE_THRESHOLD, items, 0).astype(np.uint8)
    return [item.tobytes() for item in items]


@needs_fashion
@pytest.mark.parametrize("split", ["train", "test"])
def test_each_split_takes_items_only_from_its_own_split_with_their_labels(fashion, split):
    """With canvas 28 and one item per scene the item sits at (0, 0): each scene must be a thresholded item of the
    same split, and its mask that item's class + 1 on the silhouette."""
    source = fashion[split]
    labels_of = {}
    for key, label in zip(_thresholded_keys(source.images), source.labels.tolist()):
        labels_of.setdefault(key, set()).add(label)
    dataset = fashion_mnist_scenes(split, data_dir=str(FASHION), count=300, canvas=28, items=(1, 1))
    other = "test" if split == "train" else "train"
    other_keys = set(_thresholded_keys(fashion[other].images))
    found_elsewhere = 0
    for image, mask in zip(dataset.images, dataset.masks):
        key = image[0].numpy().tobytes()
        assert key in labels_of, "a scene item that is not from its own split"
        classes = set(np.unique(mask.numpy()).tolist()) - {0}
        assert len(classes) == 1 and classes.pop() - 1 in labels_of[key]
        found_elsewhere += key in other_keys
    assert found_elsewhere <= 3  # the two splits share (almost) no image
    assert all(f"{'train' if split == 'train' else 't10k'}-" in Path(path).name for path, _ in dataset.files)


@needs_fashion
def test_fashion_mnist_scenes_dataset_contract(fashion):
    train = fashion_mnist_scenes("train", data_dir=str(FASHION), count=STATS_SCENES)
    test = fashion_mnist_scenes("test", data_dir=str(FASHION), count=200)
    assert isinstance(train, SegmentationTensorDataset) and len(train) == STATS_SCENES and len(test) == 200
    assert train.images.shape == (STATS_SCENES, 1, 64, 64) and train.masks.shape == (STATS_SCENES, 64, 64)
    assert train.classes == ["background"] + fashion["train"].classes and train.num_classes == 11
    assert train.ignore_index == IGNORE_INDEX == 255 and not (train.masks == 255).any()
    assert train.in_chans == 1 and train.image_size == 64 and len(train.palette) == 11
    assert train.palette[0] == (0, 0, 0) and len(set(train.palette)) == 11
    pixels = train.images.double() / 255  # mean/std: the first 2,000 train scenes, the same for both splits
    assert train.mean == pytest.approx((float(pixels.mean()),)) and train.std == pytest.approx((float(pixels.std()),))
    assert test.mean == train.mean and test.std == train.std
    assert not torch.equal(test.masks, train.masks[:200])  # a different layout seed and other items
    image, mask = train[5]
    assert torch.equal(image, train.images[5]) and torch.equal(mask, train.masks[5])
    small = train.subset(10)
    assert len(small) == 10 and torch.equal(small.masks, train.masks[:10]) and small.files == train.files
    assert "11 classes" in repr(train) and "2000 scenes 1x64x64" in repr(train)
    freq = train.class_frequencies()
    assert freq.shape == (11,) and freq.sum().item() == pytest.approx(1.0)
    assert freq[0].item() == pytest.approx((train.masks == 0).double().mean().item())
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        fashion_mnist_scenes("val", data_dir=str(FASHION))
