"""Dataset readers on fixtures written in the official on-disk formats, the real Fashion-MNIST, the search order,
checksum / missing-file errors, safe archive extraction, and downloads from a local HTTP server (never the network)."""
import dataclasses
import gzip
import io
import os
import random
import re
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (idx_bytes, md5, py2_pickle, save_image, tar_gz, write_cifar10, write_cifar100,
                           write_flowers102, write_idx_dataset, write_image_folder, write_pets, write_svhn,
                           write_tiny_imagenet, zip_bytes)
from local_http import server  # noqa: F401  (the fixture)
from PIL import Image

import vitlab
from vitlab._download import ChecksumError, md5sum
from vitlab.data import (DATASETS, Checksum, DatasetFormatError, DatasetNotFoundError, ImageFolderDataset,
                         MissingFileError, TensorImageDataset, UnsafeArchiveError, UnsafePickleError,
                         extract_archive, find_data_root, load_dataset)
from vitlab import _files
from vitlab.data.decode import center_crop_box, random_resized_crop_box

REAL_FASHION = Path(vitlab.__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No $VITLAB_DATA, an empty current directory, a private cache, no repository-relative data folders and no
    /usr/share/datasets."""
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(_files, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(_files, "_SYSTEM_DATA", tmp_path / "usr-share-datasets")


def fixture_checksums(monkeypatch, name, folder, keep_official=()):
    """Replace the official per-file checksums of `name` by those of the fixture files present in `folder` (except
    `keep_official`); absent files keep their official checksum."""
    info = DATASETS[name]
    checksums = dict(info.checksums)
    checksums.update({rel: Checksum(md5=(md5sum(folder / rel),), source="fixture")
                      for rel in info.checksums if (folder / rel).is_file() and rel not in keep_official})
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, checksums=checksums))
    return checksums


# ---------------------------------------------------------------- in-memory readers
def test_cifar10_reads_the_official_pickle_layout(tmp_path, monkeypatch):
    folder, written = write_cifar10(tmp_path / "d")
    fixture_checksums(monkeypatch, "cifar10", folder)
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "d")
    test = load_dataset("cifar10", "test", data_dir=folder)  # the dataset folder itself works too
    assert isinstance(train, TensorImageDataset) and len(train) == 20 and len(test) == 4
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and (train.num_classes, train.in_chans, train.image_size) == (10, 3, 32)
    expected = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)]).transpose(0, 3, 1, 2)
    assert np.array_equal(train.images.numpy(), expected)  # R, G, B planes -> channels, in batch order
    assert train.labels.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert np.array_equal(test.images.numpy(), written["test_batch"][0].transpose(0, 3, 1, 2))
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and train.mean == (0.4914, 0.4822, 0.4465)
    image, label = train[5]
    assert image.shape == (3, 32, 32) and label == written["data_batch_2"][1][1]


def test_cifar100_uses_fine_labels_and_meta(tmp_path, monkeypatch):
    folder, written = write_cifar100(tmp_path)
    fixture_checksums(monkeypatch, "cifar100", folder)
    train = load_dataset("cifar100", data_dir=tmp_path)
    assert train.num_classes == 100 and train.classes[7] == "fine_7"
    assert train.labels.tolist() == written["train"][1]
    assert np.array_equal(train.images.numpy(), written["train"][0].transpose(0, 3, 1, 2))
    assert len(load_dataset("cifar100", "test", data_dir=tmp_path)) == 6


def test_cifar_unpickler_refuses_code_and_object_arrays(tmp_path, monkeypatch):
    folder, _ = write_cifar10(tmp_path)
    fixture_checksums(monkeypatch, "cifar10", folder)
    marker = tmp_path / "pwned"
    evil = b"\x80\x02cposix\nsystem\nU" + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode() + b"\x85R."
    (folder / "test_batch").write_bytes(evil)
    fixture_checksums(monkeypatch, "cifar10", folder)
    with pytest.raises(UnsafePickleError, match=r"test_batch: refusing to load global posix\.system"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()
    obj_array = py2_pickle({b"data": np.zeros((1, 3072), np.uint8)}).replace(b"U\x02u1", b"U\x02O8")
    (folder / "test_batch").write_bytes(obj_array)
    fixture_checksums(monkeypatch, "cifar10", folder)
    with pytest.raises(UnsafePickleError, match="not a plain numeric dtype"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_svhn_reads_mat_v5_and_maps_label_10_to_0(tmp_path, monkeypatch):
    x, y = write_svhn(tmp_path / "svhn", "test")
    fixture_checksums(monkeypatch, "svhn", tmp_path / "svhn")
    ds = load_dataset("svhn", "test", data_dir=tmp_path)
    assert ds.images.shape == (5, 3, 32, 32) and ds.labels.tolist() == [0, 1, 5, 0, 9]
    n, c, h, w = 3, 2, 7, 11
    assert ds.images[n, c, h, w] == x[h, w, c, n]  # X[h, w, c, n] -> images[n, c, h, w]
    with pytest.raises(MissingFileError, match=r"train_32x32\.mat.*md5 e26dedcc434d2e4c54c9b2d4a06d8373"):
        load_dataset("svhn", "train", data_dir=tmp_path)
    from scipy.io import savemat
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x[..., :4], "y": y}, format="5")
    fixture_checksums(monkeypatch, "svhn", tmp_path / "svhn")
    with pytest.raises(DatasetFormatError, match=r"test_32x32\.mat: 'y' must have shape \(4, 1\)"):
        load_dataset("svhn", "test", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gz_and_raw(tmp_path, monkeypatch, gz):
    written = write_idx_dataset(tmp_path / "mnist", gz=gz)
    fixture_checksums(monkeypatch, "mnist", tmp_path / "mnist")
    ds = load_dataset("mnist", "train", data_dir=tmp_path)
    assert ds.images.shape == (12, 1, 28, 28) and ds.in_chans == 1 and ds.mean == (0.1307,)
    assert np.array_equal(ds.images[:, 0].numpy(), written["train"][0])
    assert ds.labels.tolist() == written["train"][1].tolist() and ds.classes == [str(d) for d in range(10)]
    test = load_dataset("mnist", "test", data_dir=tmp_path, image_size=32)
    assert test.images.shape == (5, 1, 32, 32) and test.image_size == 32


def test_idx_errors_name_the_file_and_the_field(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "mnist", gz=False)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros((12, 28, 28), np.uint8)))  # an images file where labels belong
    with pytest.raises(DatasetFormatError, match="train-labels-idx1-ubyte: idx magic number 2051, expected 2049"):
        load_dataset("mnist", data_dir=tmp_path)
    images = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: \d+ bytes, expected \d+ .*truncated"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    write_idx_dataset(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(DATASETS["fashion_mnist"], checksums={}))
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.gz: not a valid gzip file"):
        load_dataset("fashion_mnist", "test", data_dir=tmp_path)


def test_tiny_imagenet_train_val_and_decode_cache(tmp_path, monkeypatch):
    root = write_tiny_imagenet(tmp_path)
    train = load_dataset("tiny_imagenet", "train", data_dir=tmp_path)
    assert isinstance(train, TensorImageDataset) and train.images.shape == (9, 3, 64, 64)
    assert train.classes == sorted(["n01443537", "n02085620", "n01629819"])
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    means = train.images.float().mean(dim=(2, 3))  # (N, 3): solid colors, (k + 1) * 60 in channel k
    for k in range(3):
        assert torch.allclose(means[train.labels == k, k], torch.tensor(float((k + 1) * 60)), atol=3)
    val = load_dataset("tiny_imagenet", "test", data_dir=tmp_path)  # 'test' is the alias of 'val'
    wnid_of = {line.split("\t")[0]: line.split("\t")[1]
               for line in (root / "val" / "val_annotations.txt").read_text().splitlines()}
    assert val.labels.tolist() == [val.classes.index(wnid_of[f"val_{i}.JPEG"]) for i in range(7)]
    assert val.images[6].float().mean().item() == pytest.approx(200, abs=2)  # grayscale JPEG -> RGB
    caches = sorted(p.name for p in (tmp_path / "cache" / "datasets").iterdir())
    assert len(caches) == 2 and all(name.endswith(".npy") for name in caches)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = load_dataset("tiny_imagenet", "train", data_dir=tmp_path)
    assert torch.equal(again.images, train.images)


def test_tiny_imagenet_bad_annotation_names_line(tmp_path):
    root = write_tiny_imagenet(tmp_path)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match=r"val_annotations\.txt:8: .*'val_99\.JPEG\\tn99999999"):
        load_dataset("tiny_imagenet", "val", data_dir=tmp_path)


# ---------------------------------------------------------------- lazily decoded (ImageFolder-style) datasets
def test_flowers102_split_files(tmp_path, monkeypatch):
    root, labels, ids = write_flowers102(tmp_path)
    with pytest.raises(ChecksumError, match="imagelabels.mat: .*expected md5 e0620be6f572b9609742df49c70aed4d"):
        load_dataset("flowers102", data_dir=tmp_path)  # the official files' checksums are known
    fixture_checksums(monkeypatch, "flowers102", root)
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ds = load_dataset("flowers102", split, data_dir=tmp_path, image_size=24)
        assert isinstance(ds, ImageFolderDataset) and ds.num_classes == 102 and ds.train == (split == "train")
        assert [Path(p).name for p, _ in ds.samples] == [f"image_{int(i):05d}.jpg" for i in ids[key].ravel()]
        assert [label for _, label in ds.samples] == [int(labels[int(i) - 1]) - 1 for i in ids[key].ravel()]
    image, label = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24) and label == 101
    assert image[0].float().mean().item() == pytest.approx(180, abs=3)  # image 9 is red 9 * 20


def test_pets_trainval_and_test(tmp_path):
    write_pets(tmp_path)
    trainval = load_dataset("pets", "trainval", data_dir=tmp_path)
    assert load_dataset("pets", "train", data_dir=tmp_path).samples == trainval.samples  # 'train' -> 'trainval'
    assert [label for _, label in trainval.samples] == [0, 1, 0, 36]
    assert trainval.classes[0] == "Abyssinian" and trainval.classes[5] == "Bengal"
    assert trainval.classes[36] == "yorkshire_terrier" and trainval.num_classes == 37
    test = load_dataset("pets", "test", data_dir=tmp_path, image_size=16)
    assert not test.train and test[2][0].shape == (3, 16, 16) and test[2][1] == 5


def test_generic_image_folder_with_and_without_split_folders(tmp_path):
    write_image_folder(tmp_path / "flat", ("cat", "dog", "eel"), ext="png")
    flat = load_dataset("imagefolder", data_dir=tmp_path / "flat", image_size=20)
    assert flat.classes == ["cat", "dog", "eel"] and len(flat) == 6 and flat[5][1] == 2
    write_image_folder(tmp_path / "split" / "train", ("a", "b", "c"), ext="jpg")
    write_image_folder(tmp_path / "split" / "val", ("b", "c"), ext="jpg")
    val = load_dataset("imagefolder", "test", data_dir=tmp_path / "split")  # 'test' -> val/
    assert val.classes == ["a", "b", "c"] and [label for _, label in val.samples] == [1, 1, 2, 2]
    with pytest.warns(UserWarning, match="same images as 'train'"):
        load_dataset("imagefolder", "val", data_dir=tmp_path / "flat")


def test_imagenet_layout_and_flat_val_error(tmp_path):
    root = tmp_path / "imagenet"
    for wnid in ("n01440764", "n01443537"):
        for i in range(2):
            save_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", (10, 20, 30), size=(80, 60))
    save_image(root / "val" / "n01443537" / "ILSVRC2012_val_00000001.JPEG", (1, 2, 3), size=(60, 80))
    train = load_dataset("imagenet", data_dir=tmp_path, image_size=32)
    val = load_dataset("imagenet", "test", data_dir=tmp_path, image_size=32)
    assert train.train and not val.train and train.classes == ["n01440764", "n01443537"]
    assert val.samples[0][1] == 1 and val[0][0].shape == (3, 32, 32)
    (root / "val" / "n01443537" / "ILSVRC2012_val_00000001.JPEG").rename(root / "val" / "x.JPEG")
    (root / "val" / "n01443537").rmdir()
    with pytest.raises(DatasetFormatError, match=r"holds 1 images directly.*val/<wnid>/"):
        load_dataset("imagenet", "val", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no public download URL.*image-net.org"):
        load_dataset("imagenet21k", data_dir=tmp_path / "nowhere", download=True)


def test_crops(tmp_path):
    rng = random.Random(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(300, 200, (0.3, 1.0), (3 / 4, 4 / 3), rng)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 300 and bottom <= 200
        assert 0.3 * 60000 * 0.95 <= w * h <= 60000 and 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    assert center_crop_box(400, 200, 224, 0.875) == (112.5, 12.5, 287.5, 187.5)  # short side 200 -> 256, keep 224
    assert random_resized_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), rng) == (493, 0, 506, 10)  # fallback: centered, ratio <= 4/3
    # eval: a red center square inside a blue border; crop_pct 0.5 keeps only the center half (50..150)
    image = np.zeros((200, 200, 3), np.uint8)
    image[:, :, 2] = 255
    image[40:160, 40:160] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "x.png")
    ds = ImageFolderDataset([(str(tmp_path / "x.png"), 0)], ["x"], image_size=16, train=False, crop_pct=0.5)
    out = ds[0][0]
    assert out.shape == (3, 16, 16) and (out[0] == 255).all() and (out[2] == 0).all()
    whole = ImageFolderDataset([(str(tmp_path / "x.png"), 0)], ["x"], image_size=16, crop_pct=1.0)[0][0]
    assert whole[2, 0, 0] == 255 and whole[0, 8, 8] == 255  # blue corner, red center
    train = ImageFolderDataset([(str(tmp_path / "x.png"), 0)], ["x"], image_size=16, train=True)
    assert train[0][0].shape == (3, 16, 16) and train[0][0].dtype == torch.uint8


def test_undecodable_image_names_file(tmp_path):
    write_image_folder(tmp_path / "f", ("a",), per_class=1, ext="jpg")
    (tmp_path / "f" / "a" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match=r"0\.jpg: unreadable image"):
        load_dataset("imagefolder", data_dir=tmp_path / "f")[0]


# ---------------------------------------------------------------- the real Fashion-MNIST
@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="../shared/data/fashion-mnist is absent")
def test_real_fashion_mnist_loads_fast_from_shared_data(monkeypatch):
    monkeypatch.setattr(_files, "_REPO_ROOT", Path(vitlab.__file__).resolve().parents[1])
    monkeypatch.setattr(_files, "_SYSTEM_DATA", Path("/usr/share/datasets"))
    monkeypatch.setattr(_files, "_VERIFIED", set())
    assert find_data_root("fashion_mnist").resolve() in {REAL_FASHION.resolve(), DEBIAN_FASHION.resolve()}
    start = time.perf_counter()
    train = load_dataset("fashion_mnist", "train")
    elapsed = time.perf_counter() - start
    test = load_dataset("fashion_mnist", "test")
    assert elapsed < 2.0, f"Fashion-MNIST train took {elapsed:.2f} s"
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    pixels = train.images.double() / 255
    assert pixels.mean().item() == pytest.approx(train.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(train.std[0], abs=1e-3)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist (apt) is not installed")
def test_debian_fashion_mnist_package_is_found_and_verifies(monkeypatch):
    monkeypatch.setattr(_files, "_SYSTEM_DATA", DEBIAN_FASHION.parent)
    monkeypatch.setattr(_files, "_VERIFIED", set())
    assert find_data_root("fashion_mnist") == DEBIAN_FASHION  # no other copy is searched in this test
    test = load_dataset("fashion_mnist", "test")  # checked against the Debian sha256s
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.bincount().tolist() == [1000] * 10


# ---------------------------------------------------------------- search order, missing and corrupt files
def test_search_order(tmp_path, monkeypatch):
    for where in ("explicit", "env", "cwd/data"):
        (tmp_path / where / "cifar-10-batches-py").mkdir(parents=True)
        (tmp_path / where / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "env"))
    assert find_data_root("cifar10", tmp_path / "explicit") == tmp_path / "explicit" / "cifar-10-batches-py"
    with pytest.raises(DatasetNotFoundError, match="not in data_dir"):  # an explicit data_dir never falls back
        find_data_root("cifar10", tmp_path / "elsewhere")
    assert find_data_root("cifar10") == tmp_path / "env" / "cifar-10-batches-py"
    monkeypatch.delenv("VITLAB_DATA")
    assert find_data_root("cifar10").resolve() == (tmp_path / "cwd" / "data" / "cifar-10-batches-py").resolve()
    shared = tmp_path / "shared" / "data" / "cifar-100-python"  # ../shared/data relative to the repository root
    shared.mkdir(parents=True)
    (shared / "meta").write_bytes(b"")
    assert find_data_root("cifar100") == shared


def test_not_found_lists_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        find_data_root("cifar10", tmp_path / "mine")
    message = str(info.value)
    for place in (tmp_path / "mine", tmp_path / "env", Path.cwd() / "data", tmp_path / "repo" / "data",
                  tmp_path / "shared" / "data", tmp_path / "usr-share-datasets"):
        assert str(place) in message
    assert "download=True" in message and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        find_data_root("fashion_mnist", tmp_path / "mine")


def test_missing_and_corrupt_files_name_file_and_checksum(tmp_path, monkeypatch):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    fixture_checksums(monkeypatch, "cifar10", folder, keep_official=("data_batch_3",))
    with pytest.raises(MissingFileError, match=r"data_batch_3; expected md5 54ebc095f3ab1f0389bbae665268c751"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert len(load_dataset("cifar10", "test", data_dir=tmp_path)) == 4  # the test split does not need it
    checksums = fixture_checksums(monkeypatch, "cifar10", folder)
    data = bytearray((folder / "test_batch").read_bytes())
    data[-100] ^= 0xFF
    (folder / "test_batch").write_bytes(bytes(data))
    expected = checksums["test_batch"].md5[0]
    with pytest.raises(ChecksumError, match=f"test_batch: corrupt .* expected md5 {expected}"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], checksums={}))
    (folder / "test_batch").write_bytes(bytes(data[:5000]))  # truncated, no checksum to catch it
    with pytest.raises(DatasetFormatError, match="test_batch: not a readable CIFAR pickle"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_official_checksums_are_enforced(tmp_path):
    write_cifar10(tmp_path)  # fixture files are not the official ones
    with pytest.raises(ChecksumError, match=r"batches\.meta: .*expected md5 5ff9c542aee3614f3951f8cda6e48888"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    write_idx_dataset(tmp_path / "fashion-mnist")
    with pytest.raises(ChecksumError, match="expected md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d or sha256 "
                                            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"):
        load_dataset("fashion_mnist", "train", data_dir=tmp_path)


def test_registry_has_the_official_sources():
    hexdigest = re.compile(r"^[0-9a-f]{32}$")
    for name, info in DATASETS.items():
        assert set(info.required) <= set(info.splits), name
        for remote in info.remote or ():
            assert remote.url.startswith(("http://", "https://")) and hexdigest.match(remote.md5), name
            assert remote.url.rsplit("/", 1)[1] == Path(remote.path).name
        for checksum in info.checksums.values():
            assert all(hexdigest.match(v) for v in checksum.md5) and checksum.describe()
    assert DATASETS["cifar10"].remote[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert DATASETS["tiny_imagenet"].remote[0].url == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert DATASETS["imagenet"].remote is None and DATASETS["imagenet21k"].remote is None
    assert {f.splits for f in DATASETS["svhn"].remote} == {("train",), ("test",), ("extra",)}


# ---------------------------------------------------------------- archives
def _tar_with(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("good/file.txt")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "zip-dotdot"])
def test_unsafe_archives_are_refused_before_writing(tmp_path, kind):
    archive = tmp_path / ("a.zip" if kind.startswith("zip") else "a.tar.gz")
    if kind == "zip-dotdot":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("good/file.txt", "x")
            zf.writestr("../evil.txt", "x")
    else:
        member = tarfile.TarInfo({"dotdot": "good/../../evil.txt", "absolute": "/tmp/evil.txt",
                                  "symlink": "good/link"}[kind])
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.write_bytes(_tar_with(member))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=re.escape(str(archive))):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_extraction_merges_into_an_existing_folder(tmp_path):
    write_image_folder(tmp_path / "src" / "tree", ("a",), per_class=1)
    archive = tmp_path / "t.tar.gz"
    archive.write_bytes(tar_gz(tmp_path / "src" / "tree"))
    (tmp_path / "dest" / "tree").mkdir(parents=True)
    (tmp_path / "dest" / "tree" / "keep.txt").write_text("mine")
    extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "tree" / "a" / "0.png").is_file()
    assert (tmp_path / "dest" / "tree" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["tree"]  # no temporary folder left


# ---------------------------------------------------------------- downloads from a local server
def _serve_cifar10(tmp_path, monkeypatch, base, handler, served: bytes | None = None):
    folder, written = write_cifar10(tmp_path / "src")
    archive = tar_gz(folder)
    handler.files["/cifar-10-python.tar.gz"] = archive if served is None else served
    info = DATASETS["cifar10"]
    remote = dataclasses.replace(info.remote[0], url=f"{base}/cifar-10-python.tar.gz", md5=md5(archive))
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(info, remote=(remote,)))
    fixture_checksums(monkeypatch, "cifar10", folder)
    return archive, written


def test_download_extracts_and_loads(server, tmp_path, monkeypatch):
    base, handler = server
    _, written = _serve_cifar10(tmp_path, monkeypatch, base, handler)
    target = tmp_path / "downloads"
    ds = load_dataset("cifar10", "test", data_dir=target, download=True)
    assert np.array_equal(ds.images.numpy(), written["test_batch"][0].transpose(0, 3, 1, 2))
    assert (target / "cifar-10-python.tar.gz").is_file() and (target / "cifar-10-batches-py" / "test_batch").is_file()
    load_dataset("cifar10", "train", data_dir=target, download=True)  # present: nothing fetched again
    assert handler.requests == [("/cifar-10-python.tar.gz", None)]


def test_corrupt_download_leaves_nothing_behind(server, tmp_path, monkeypatch):
    base, handler = server
    folder_bytes = tar_gz(write_image_folder(tmp_path / "other", ("z",), per_class=1))
    archive, _ = _serve_cifar10(tmp_path, monkeypatch, base, handler, served=folder_bytes)
    target = tmp_path / "downloads"
    with pytest.raises(ChecksumError, match=f"md5 .* does not match the expected {md5(archive)}"):
        load_dataset("cifar10", data_dir=target, download=True)
    assert not target.exists() or list(target.iterdir()) == []


def test_download_resumes_a_partial_archive(server, tmp_path, monkeypatch):
    base, handler = server
    archive, _ = _serve_cifar10(tmp_path, monkeypatch, base, handler)
    target = tmp_path / "downloads"
    target.mkdir()
    (target / "cifar-10-python.tar.gz.part").write_bytes(archive[:1000])
    assert len(load_dataset("cifar10", data_dir=target, download=True)) == 20
    assert handler.requests == [("/cifar-10-python.tar.gz", "bytes=1000-")]


def test_download_fetches_only_the_split_asked_for(server, tmp_path, monkeypatch):
    base, handler = server
    write_svhn(tmp_path / "src", "test")
    data = (tmp_path / "src" / "test_32x32.mat").read_bytes()
    handler.files["/test_32x32.mat"] = data
    info = DATASETS["svhn"]
    remote = tuple(dataclasses.replace(f, url=f"{base}/{Path(f.path).name}",
                                       md5=md5(data) if f.splits == ("test",) else f.md5) for f in info.remote)
    monkeypatch.setitem(DATASETS, "svhn", dataclasses.replace(info, remote=remote, checksums={
        "test_32x32.mat": Checksum(md5=(md5(data),))}))
    ds = load_dataset("svhn", "test", data_dir=tmp_path / "dl", download=True)
    assert len(ds) == 5 and handler.requests == [("/test_32x32.mat", None)]
    assert (tmp_path / "dl" / "svhn" / "test_32x32.mat").is_file()


def test_download_tiny_imagenet_zip_and_fashion_gz(server, tmp_path, monkeypatch):
    base, handler = server
    zipped = zip_bytes(write_tiny_imagenet(tmp_path / "src"))
    handler.files["/tiny-imagenet-200.zip"] = zipped
    info = DATASETS["tiny_imagenet"]
    remote = dataclasses.replace(info.remote[0], url=f"{base}/tiny-imagenet-200.zip", md5=md5(zipped))
    monkeypatch.setitem(DATASETS, "tiny_imagenet", dataclasses.replace(info, remote=(remote,)))
    assert len(load_dataset("tiny_imagenet", "val", data_dir=tmp_path / "dl", download=True)) == 7
    written = write_idx_dataset(tmp_path / "src" / "fm")
    info = DATASETS["fashion_mnist"]
    remote = []
    for f in info.remote:
        data = (tmp_path / "src" / "fm" / Path(f.path).name).read_bytes()
        handler.files[f"/{Path(f.path).name}"] = data
        remote.append(dataclasses.replace(f, url=f"{base}/{Path(f.path).name}", md5=md5(data)))
    monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(info, remote=tuple(remote), checksums={
        Path(f.path).name: Checksum(md5=(f.md5,)) for f in remote}))
    ds = load_dataset("fashion_mnist", "train", data_dir=tmp_path / "dl", download=True)
    assert np.array_equal(ds.images[:, 0].numpy(), written["train"][0])
    assert gzip.decompress((tmp_path / "dl" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").read_bytes())[:4] \
        == (2049).to_bytes(4, "big")
    assert sorted(os.listdir(tmp_path / "dl")) == ["fashion-mnist", "tiny-imagenet-200", "tiny-imagenet-200.zip"]
