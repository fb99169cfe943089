"""Small dataset files written in exactly the official on-disk formats, for the reader tests.

CIFAR batches are written as Python 2 cPickle wrote them (protocol 2, str keys as SHORT_BINSTRING / BINSTRING, the
numpy array via numpy.core.multiarray._reconstruct + BUILD with numpy.dtype('u1', 0, 1)): the opcodes and globals of
the official files, only without their memo (BINPUT) opcodes. Python 3's pickler would instead encode bytes through
_codecs.encode and name numpy._core, which the official files never contain."""
from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


# ---------------------------------------------------------------- Python 2 style pickles (the official CIFAR files)
def _py2_str(value: bytes) -> bytes:
    return (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value))) + value


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_ndarray(array: np.ndarray) -> bytes:
    shape = b"(" + b"".join(_py2_int(d) for d in array.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(array.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
            + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(np.ascontiguousarray(array).tobytes()) + b"tb")


def _py2_value(value) -> bytes:
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, bool) or value is None:
        return {True: b"\x88", False: b"\x89", None: b"N"}[value]
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, np.ndarray):
        return _py2_ndarray(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(_py2_value(k) + _py2_value(v) for k, v in value.items()) + b"u"
    raise TypeError(type(value))


def py2_pickle(obj) -> bytes:
    """`obj` (dict / list / bytes / int / bool / None / uint8 ndarray) pickled as Python 2 cPickle protocol 2 did."""
    return b"\x80\x02" + _py2_value(obj) + b"."


# ---------------------------------------------------------------- CIFAR
def cifar_rows(images_hwc: np.ndarray) -> np.ndarray:
    """CIFAR's documented row layout: 1024 red values, then 1024 green, then 1024 blue, each plane row-major."""
    return np.concatenate([images_hwc[..., c].reshape(len(images_hwc), 1024) for c in range(3)], axis=1)


def write_cifar10(base: Path, per_batch: int = 4, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """`base/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`; returns the folder and, per file,
    the HWC images written."""
    rng = np.random.default_rng(seed)
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": labels,
                 b"data": cifar_rows(images), b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)]}
        (folder / name).write_bytes(py2_pickle(batch))
        written[name] = (images, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(py2_pickle({b"num_cases_per_batch": per_batch, b"label_names": names,
                                                      b"num_vis": 3072}))
    return folder, written


def write_cifar100(base: Path, n: int = 6, seed: int = 1) -> tuple[Path, dict]:
    """`base/cifar-100-python/{train, test, meta}` with b'fine_labels' / b'coarse_labels'."""
    rng = np.random.default_rng(seed)
    folder = base / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine], b"data": cifar_rows(images)}
        (folder / name).write_bytes(py2_pickle(batch))
        written[name] = (images, fine)
    meta = {b"fine_label_names": [f"fine_{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse_{k}".encode() for k in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    return folder, written


# ---------------------------------------------------------------- SVHN, idx
def write_svhn(folder: Path, split: str, n: int = 5, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """`folder/<split>_32x32.mat` (MATLAB v5): 'X' uint8 (32, 32, 3, N), 'y' (N, 1) in 1..10; returns (X, y)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [5], [10], [9]][:n] + [[3]] * max(0, n - 5), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y}, format="5")
    return x, y


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: 0x0000, 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 3) -> dict:
    """MNIST-style `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, labels)
    return written


# ---------------------------------------------------------------- images and ImageFolder-style trees
def save_image(path: Path, color, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, quality=95)


def write_tiny_imagenet(base: Path, wnids=("n01443537", "n02085620", "n01629819"), per_class: int = 3) -> Path:
    """tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/<wnid>_<k>.JPEG, train/<wnid>/<wnid>_boxes.txt,
    val/images/val_<k>.JPEG, val/val_annotations.txt}; class k's images are a solid color (k+1)*60 in channel k."""
    root = base / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))  # official order is not sorted
    words = "".join(f"{w}\tdescription of {w}\n" for w in sorted(wnids)) + "n00001740\tentity\n"
    (root / "words.txt").write_text(words)
    for wnid in wnids:
        k = sorted(wnids).index(wnid)
        color = tuple((k + 1) * 60 if c == k % 3 else 0 for c in range(3))
        for i in range(per_class):
            save_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", color)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    lines = []
    for i, wnid in enumerate(list(wnids) * 2):
        k = sorted(wnids).index(wnid)
        color = tuple((k + 1) * 60 if c == k % 3 else 0 for c in range(3))
        save_image(root / "val" / "images" / f"val_{i}.JPEG", color)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t32\t44\t62\n")
    save_image(root / "val" / "images" / "val_6.JPEG", 200, mode="L")  # some official images are grayscale
    lines.append(f"val_6.JPEG\t{wnids[0]}\t1\t2\t3\t4\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    return root


def write_flowers102(base: Path) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    """flowers-102/{jpg/image_%05d.jpg, imagelabels.mat ('labels' 1 x N in 1..102), setid.mat (1-based ids)}."""
    from scipy.io import savemat

    root = base / "flowers-102"
    labels = np.array([[1, 102, 5, 5, 17, 1, 60, 2, 102, 3]], dtype=np.float64)
    for i in range(1, labels.size + 1):
        save_image(root / "jpg" / f"image_{i:05d}.jpg", (i * 20, 0, 0), size=(50 + i, 40))
    savemat(root / "imagelabels.mat", {"labels": labels}, format="5")
    ids = {"trnid": np.array([[1, 3, 5, 7]], dtype=np.float64), "valid": np.array([[2, 4, 6]], dtype=np.float64),
           "tstid": np.array([[8, 9, 10]], dtype=np.float64)}
    savemat(root / "setid.mat", ids, format="5")
    return root, labels.ravel(), ids


def write_pets(base: Path) -> Path:
    """oxford-iiit-pet/{images/<Breed>_<k>.jpg, annotations/{trainval,test}.txt} ("<id> <class 1..37> <species>
    <breed id>")."""
    root = base / "oxford-iiit-pet"
    entries = {"trainval": [("Abyssinian_100", 1, 1, 1), ("american_bulldog_10", 2, 2, 1), ("Abyssinian_101", 1, 1, 1),
                            ("yorkshire_terrier_9", 37, 2, 25)],
               "test": [("Abyssinian_1", 1, 1, 1), ("american_bulldog_100", 2, 2, 1), ("Bengal_3", 6, 1, 2)]}
    for split, rows in entries.items():
        for image, class_id, _, _ in rows:
            save_image(root / "images" / f"{image}.jpg", (class_id * 6, 100, 0), size=(70, 90))
        text = "".join(f"{image} {c} {s} {b}\n" for image, c, s, b in rows)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.txt").write_text(text)
    return root


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 2, ext: str = "png") -> Path:
    """root/<class>/<k>.<ext>, class k a solid color."""
    for k, name in enumerate(classes):
        for i in range(per_class):
            save_image(root / name / f"{i}.{ext}", (k * 100, 50, 25), size=(40 + 7 * i, 30))
    return root


# ---------------------------------------------------------------- archives and checksums
def tar_bytes(members: dict[str, bytes], compression: str = "") -> bytes:
    """A tar archive ("gz", "xz" or "" for none) of regular-file members {name: data}, in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_gz(folder: Path, arcname: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname or folder.name)
    return buffer.getvalue()


def zip_bytes(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ADE20K in its published layout (tests/test_seg_data.py, tests/test_seg_train.py)
SIZES = {"training": [(64, 48), (40, 72), (64, 48), (40, 72)], "validation": [(40, 72), (64, 48)]}  # (W, H)
PREFIX = {"training": "ADE_train_", "validation": "ADE_val_"}


def stored_mask(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 of 8 x 8 blocks with stored values 0 … 150, both ends present."""
    blocks = rng.integers(0, 151, (-(-height // 8), -(-width // 8))).astype(np.uint8)
    blocks.flat[0], blocks.flat[-1] = 0, 150
    return np.kron(blocks, np.ones((8, 8), np.uint8))[:height, :width]


def write_ade(base: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """base/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.jpg|png; returns stem → mask."""
    rng, masks = np.random.default_rng(seed), {}
    for split, sizes in SIZES.items():
        images, annotations = (base / "ADEChallengeData2016" / part / split for part in ("images", "annotations"))
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes, start=1):
            stem = f"{PREFIX[split]}{i:08d}"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{stem}.jpg", quality=90)
            masks[stem] = stored_mask(w, h, rng)
            Image.fromarray(masks[stem]).save(annotations / f"{stem}.png")  # mode L, 8-bit single channel
    return masks
