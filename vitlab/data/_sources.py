"""What vitlab knows about each dataset: folder names, splits, class counts, official download URLs and checksums.

Facts only, no logic. URLs and md5 checksums are those the dataset hosts publish (as listed in torchvision's dataset
sources); the Fashion-MNIST sha256s of Debian's re-gzipped files are from ../shared/data/SOURCES.md. A download is
checked against the archive's md5; files already on disk are checked against the per-file checksums in `checksums`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .._files import Checksum

__all__ = ["RemoteFile", "DatasetInfo", "DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "SEGMENTATION_DATASETS",
           "IMAGE_TEXT_PREFIX", "CLASS_CAPTIONED_DATASETS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The names of the other dataset kinds, listed here so that an unknown name's error can list every kind
# (vitlab/data/_locate.py) without importing their readers.
SEGMENTATION_DATASETS = ("ade20k", "ade20k_shards", "fashion_mnist_scenes")
IMAGE_TEXT_PREFIX = "image_text:"
# Class-captioned CLIP datasets: name → the labelled image dataset whose class names caption it (on the device,
# with prompt templates; vitlab/train/clip.py).
CLASS_CAPTIONED_DATASETS = {"fashion_mnist_captions": "fashion_mnist"}


@dataclass(frozen=True)
class RemoteFile:
    """One official file. `path` is where it is saved, relative to the download directory; archives are unpacked
    into `extract_to` (relative to the same directory). `splits`: the splits that need it (None: all)."""
    url: str
    path: str
    md5: str
    extract_to: str | None = None
    splits: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """`folders`: names the dataset's folder may have under a data directory (the first is where downloads go).
    `markers`: files or folders inside it that identify it. `required[split]`: what a split needs (a `.gz` entry is
    also satisfied by the same file uncompressed). `checksums`: per-file digests of the official files.
    `remote`: the official downloads, None where there is no public URL (then `how_to_get` says what to do)."""
    name: str
    folders: tuple[str, ...]
    splits: tuple[str, ...]
    num_classes: int | None
    remote: tuple[RemoteFile, ...] | None
    markers: tuple[str, ...]
    required: dict[str, tuple[str, ...]]
    checksums: dict[str, Checksum] = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_memory: bool = True
    homepage: str = ""
    how_to_get: str = ""

    def files_for(self, split: str) -> tuple[RemoteFile, ...]:
        """The official downloads `split` needs."""
        return tuple(f for f in self.remote or () if f.splits is None or split in f.splits)


def _official(md5s: dict[str, str]) -> dict[str, Checksum]:
    """{file name: md5} of the official files as `Checksum`s."""
    return {name: Checksum(md5=(md5,), source="official") for name, md5 in md5s.items()}


_CIFAR10_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}
_CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                 "meta": "7973b15100ade9c7d40fb424638fde48"}
_SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3",
             "extra": "a93ce644f1a588dc4d68dda5feec44a7"}
_MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
# Fashion-MNIST: (upstream .gz md5, Debian dataset-fashion-mnist .gz sha256, md5 of the decompressed idx file).
_FASHION = {"train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                                        "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe",
                                        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                                        "9018921c3c673c538a1fc5bad174d6f9"),
            "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79",
                                       "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                                       "8181f5470baa50b63fa0f6fddb340f0a"),
            "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310",
                                       "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                                       "15d484375f8d13e6eb1aabb0c3f46965")}
_FASHION_CHECKSUMS = {
    **{f"{name}.gz": Checksum(md5=(gz_md5,), sha256=(debian_sha256,), source="upstream gzip or Debian's re-gzip")
       for name, (gz_md5, debian_sha256, _) in _FASHION.items()},
    **{name: Checksum(md5=(raw_md5,), source="decompressed idx file") for name, (_, _, raw_md5) in _FASHION.items()}}

_IDX_SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"


def _imagenet_how(folder: str, with_val: bool) -> str:
    """Where to put an ImageNet-style tree (there is no public URL to download it from)."""
    val = (f" and <data dir>/{folder}/val/<wnid>/*.JPEG (the validation images sorted into class folders)"
           if with_val else "")
    return (f"ImageNet has no public download URL: get it from https://image-net.org (after registration) and arrange "
            f"it as an ImageFolder tree <data dir>/{folder}/train/<wnid>/*.JPEG{val}, or pass data_dir= / --data-dir "
            f"pointing at the folder that holds train/{' and val/' if with_val else ''}.")


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in [
    DatasetInfo(
        "cifar10", ("cifar-10-batches-py",), ("train", "test"), 10,
        (RemoteFile(_CIFAR_URL + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a", extract_to="."),),
        markers=("batches.meta", "data_batch_1", "test_batch"),
        required={"train": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",),
                  "test": ("test_batch", "batches.meta")},
        checksums=_official(_CIFAR10_MD5),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    DatasetInfo(
        "cifar100", ("cifar-100-python",), ("train", "test"), 100,
        (RemoteFile(_CIFAR_URL + "cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                    "eb9058c3a382ffc7106e4002c42a8d85", extract_to="."),),
        markers=("meta",), required={"train": ("train", "meta"), "test": ("test", "meta")},
        checksums=_official(_CIFAR100_MD5),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    DatasetInfo(
        "svhn", ("svhn", "SVHN"), ("train", "test", "extra"), 10,
        tuple(RemoteFile(f"{_SVHN_URL}{split}_32x32.mat", f"svhn/{split}_32x32.mat", md5, splits=(split,))
              for split, md5 in _SVHN_MD5.items()),
        markers=("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"),
        required={split: (f"{split}_32x32.mat",) for split in _SVHN_MD5},
        checksums=_official({f"{split}_32x32.mat": md5 for split, md5 in _SVHN_MD5.items()}),
        mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
        homepage="http://ufldl.stanford.edu/housenumbers/"),
    DatasetInfo(
        "mnist", ("mnist", "MNIST/raw"), ("train", "test"), 10,
        tuple(RemoteFile(_MNIST_URL + name, f"mnist/{name}", md5) for name, md5 in _MNIST_MD5.items()),
        markers=tuple(_MNIST_MD5) + tuple(name.removesuffix(".gz") for name in _MNIST_MD5),
        required=_IDX_SPLITS,
        checksums=_official(_MNIST_MD5),
        mean=(0.1307,), std=(0.3081,), homepage="http://yann.lecun.com/exdb/mnist/"),
    DatasetInfo(
        "fashion_mnist", ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"), ("train", "test"), 10,
        tuple(RemoteFile(f"{_FASHION_URL}{name}.gz", f"fashion-mnist/{name}.gz", gz_md5)
              for name, (gz_md5, _, _) in _FASHION.items()),
        markers=tuple(f"{name}.gz" for name in _FASHION) + tuple(_FASHION), required=_IDX_SPLITS,
        checksums=_FASHION_CHECKSUMS, mean=(0.2860,), std=(0.3530,),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        how_to_get="On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` installs the files into "
                   "/usr/share/datasets/fashion-mnist/, which is searched."),
    DatasetInfo(
        "tiny_imagenet", ("tiny-imagenet-200",), ("train", "val"), 200,
        (RemoteFile("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                    "90528d7ca1a48142e341f4ef8d21d0de", extract_to="."),),
        markers=("wnids.txt",),
        required={"train": ("wnids.txt", "train"), "val": ("wnids.txt", "val/val_annotations.txt", "val/images")},
        mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
        homepage="https://www.kaggle.com/c/tiny-imagenet"),
    DatasetInfo(
        "imagenet", ("imagenet", "ImageNet", "imagenet-1k", "ILSVRC2012"), ("train", "val"), 1000, None,
        markers=("train", "val"), required={"train": ("train",), "val": ("val",)}, in_memory=False,
        homepage="https://image-net.org", how_to_get=_imagenet_how("imagenet", with_val=True)),
    DatasetInfo(
        "imagenet21k", ("imagenet21k", "imagenet-21k", "imagenet22k", "imagenet-22k"), ("train",), None, None,
        markers=("train",), required={"train": ("train",)}, in_memory=False, homepage="https://image-net.org",
        how_to_get=_imagenet_how("imagenet21k", with_val=False)),
    DatasetInfo(
        "flowers102", ("flowers-102", "flowers102", "oxford-flowers-102"), ("train", "val", "test"), 102,
        (RemoteFile(_FLOWERS_URL + "102flowers.tgz", "flowers-102/102flowers.tgz", "52808999861908f626f3c1f4e79d11fa",
                    extract_to="flowers-102"),
         RemoteFile(_FLOWERS_URL + "imagelabels.mat", "flowers-102/imagelabels.mat",
                    "e0620be6f572b9609742df49c70aed4d"),
         RemoteFile(_FLOWERS_URL + "setid.mat", "flowers-102/setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c")),
        markers=("imagelabels.mat", "setid.mat"),
        required={split: ("imagelabels.mat", "setid.mat", "jpg") for split in ("train", "val", "test")},
        checksums=_official({"imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
                             "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c"}),
        in_memory=False, homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    DatasetInfo(
        "pets", ("oxford-iiit-pet", "pets", "oxford_iiit_pet"), ("trainval", "test"), 37,
        (RemoteFile(_PETS_URL + "images.tar.gz", "oxford-iiit-pet/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c",
                    extract_to="oxford-iiit-pet"),
         RemoteFile(_PETS_URL + "annotations.tar.gz", "oxford-iiit-pet/annotations.tar.gz",
                    "95a8c909bbe2e81eed6a22bccdf3f68f", extract_to="oxford-iiit-pet")),
        markers=("annotations/trainval.txt", "annotations/test.txt"),
        required={"trainval": ("annotations/trainval.txt", "images"), "test": ("annotations/test.txt", "images")},
        in_memory=False, homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/"),
    DatasetInfo(
        "imagefolder", (), ("train", "val", "test"), None, None, markers=(), required={}, in_memory=False,
        how_to_get="'imagefolder' reads the folder given as data_dir= / --data-dir: <root>/<split>/<class>/*.jpg|png, "
                   "or <root>/<class>/*.jpg|png directly."),
    DatasetInfo(
        "shards", (), (), None, None, markers=(), required={}, in_memory=False,
        how_to_get="'shards' reads WebDataset tar shards: data_dir= a folder, the split a sub-folder holding "
                   "index.json (as `vitlab shards` writes) or .tar files, or a brace pattern such as "
                   "'train-{000000..000146}.tar' (relative to data_dir)."),
]}
