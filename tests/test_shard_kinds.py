"""One shard index, one shard writer and one `subset` for the three shard kinds (issue 24, point 4):
classification, segmentation and image–caption shards are declared `ShardKind`s (their columns) read by one scanner
into one `ShardIndex`; their three writers put tar files on disk through one function; every dataset class shares
one `subset`. Per kind: write → index → read → subset round trips."""
import io
import sys

import numpy as np
import pytest
import torch
from data_fixtures import tar_bytes, write_ade
from PIL import Image

import vitlab.data.shards as shards_module
from vitlab.data import (ADE20KDataset, CaptionShardDataset, CsvImageTextDataset, DatasetFormatError, DecodeCrop,
                         EncodedImageDataset, ImageFolderDataset, SegCrop, SegmentationDataset,
                         SegmentationShardDataset, ShardDataset, TensorImageDataset, write_caption_shards,
                         write_segmentation_shards, write_shards)
from vitlab.data.scenes import SegmentationTensorDataset
from vitlab.data.shard_index import ShardIndex, ShardKind, index_tar, load_offsets, scan_tar_members
from vitlab.data.shard_set import write_tar_shards

CROP = DecodeCrop(8, train=False, crop_pct=1.0)
OLD_NPZ_ARRAYS = ["shard", "offset", "size", "label", "key", "shard_bytes", "shard_mtime_ns"]  # as 8cd809b wrote


def tokens(texts):
    return torch.tensor([[len(t), ord(t[-1])] for t in texts])  # (N, 2): enough to tell captions apart


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_dataset_class_shares_one_subset_and_the_shard_datasets_one_index():
    classes = [ShardDataset, SegmentationShardDataset, CaptionShardDataset, ImageFolderDataset, ADE20KDataset,
               TensorImageDataset, SegmentationTensorDataset, CsvImageTextDataset]
    assert len({cls.subset for cls in classes}) == 1  # the same function object
    assert [cls.SUBSET_DRAWN for cls in classes] == [False, False, False, True, True, False, False, False]
    kinds = [cls.KIND for cls in classes[:3]]
    assert all(isinstance(kind, ShardKind) for kind in kinds)
    assert [kind.name for kind in kinds] == ["classification", "segmentation", "image_text"]
    assert [[c.name for c in kind.columns] for kind in kinds] == [["image", "labels"], ["image", "mask"],
                                                                  ["image", "members", "captions"]]


def test_the_three_writers_write_their_tars_through_one_function(tmp_path, monkeypatch):
    from webdataset import TarWriter

    writers, real = [], TarWriter.__init__

    def spy(self, *args, **kwargs):
        writers.append(sys._getframe(1).f_code)  # the function that opens the tar
        real(self, *args, **kwargs)

    monkeypatch.setattr(TarWriter, "__init__", spy)
    write_shards(TensorImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0]), ["a", "b"],
                                    "toy", (0.5,), (0.5,)), tmp_path / "cls", shard_size=2, progress=False)
    write_ade(tmp_path / "ade")
    write_segmentation_shards(ADE20KDataset(tmp_path / "ade", "validation", SegCrop(size=8, train=False)),
                              tmp_path / "seg", shard_size=2)
    write_caption_shards([(png(i), f"c{i}") for i in range(3)], tmp_path / "caps", shard_size=2)
    tars = [p for kind in ("cls", "seg", "caps") for p in (tmp_path / kind).glob("*.tar")]
    assert len(writers) == len(tars) == 5 and set(writers) == {write_tar_shards.__code__}


def test_classification_round_trip_and_an_index_npz_in_the_format_before_the_shared_index(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (7, 3, 8, 8), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    out = write_shards(TensorImageDataset(images, labels, ["a", "b", "c"], "toy", (0.5,), (0.25,)), tmp_path / "cls",
                       shard_size=3, seed=1, progress=False)
    with np.load(out / "index.npz") as npz:
        assert npz.files == OLD_NPZ_ARRAYS  # an index.npz of 8cd809b is this file: read as before, not re-indexed
    monkeypatch.setattr(shards_module, "index_shard", lambda *a: pytest.fail("re-indexed a shard index.npz holds"))
    data = ShardDataset.from_spec(str(out), None, CROP)
    monkeypatch.undo()
    scanned = [index_tar(ix.path, ShardDataset.KIND) for ix in data.shards]
    assert all(isinstance(ix, ShardIndex) for ix in data.shards + scanned)
    for stored, again in zip(data.shards, scanned):  # the stored index is the scanned one
        assert stored.keys == again.keys and np.array_equal(stored.image, again.image)
        assert np.array_equal(stored.labels, again.labels)
    assert data.shard_sizes == [3, 3, 1] and len(data) == 7
    for i in range(len(data)):
        key = int(data.source(i)[2].split("'")[1])
        image, label = data[i]
        assert label == int(labels[key]) and torch.equal(image, images[key])
    first = data.subset(4)
    assert first.shard_sizes == [3, 1] and [data.source(i)[2] for i in range(4)] == \
        [first.source(i)[2] for i in range(4)]
    assert load_offsets(out, ShardDataset.KIND, [ix.path for ix in data.shards], shards_module.index_shard)[0].keys \
        == data.shards[0].keys


def test_segmentation_round_trip(tmp_path):
    write_ade(tmp_path / "ade")
    crop = SegCrop(size=16, train=False, scale=(32, 16))
    source = ADE20KDataset(tmp_path / "ade", "training", crop)
    out = write_segmentation_shards(source, tmp_path / "seg", shard_size=2)
    data = SegmentationShardDataset.from_folder(out, crop)
    assert data.shard_sizes == [2] * (len(source) // 2) + [1] * (len(source) % 2) and len(data) == len(source)
    for i in range(len(data)):
        key = int(data.source(i)[2].split("'")[1])
        image, mask, _ = source.encoded_pair(key)
        assert data.source(i)[:2] == (image, mask)
        assert all(torch.equal(a, b) for a, b in zip(data[i], source[key]))
    first = data.subset(3)
    assert first.shard_sizes == [2, 1] and [first.source(i) for i in range(3)] == [data.source(i) for i in range(3)]
    assert [ix.keys for ix in first.shards] == [data.shards[0].keys, data.shards[1].keys[:1]]


def test_caption_round_trip(tmp_path):
    pairs = [(png(20 * i), f"caption {i}") for i in range(5)]
    write_caption_shards(pairs, tmp_path / "caps", shard_size=2)
    data = CaptionShardDataset(tmp_path / "caps", tokens, CROP)
    assert data.shard_sizes == [2, 2, 1] and data.captions == [c for _, c in pairs]
    for i, (image, caption) in enumerate(pairs):
        assert data.source(i)[0] == image and torch.equal(data[i][1], tokens([caption])[0])
    first = data.subset(3)
    assert first.shard_sizes == [2, 1] and first.captions == data.captions[:3]
    assert [first.source(i)[2] for i in range(3)] == [data.source(i)[2] for i in range(3)]
    assert first.shards[1].members == ["000000002.png"]


class _Encoded(EncodedImageDataset):
    """Samples whose encoded bytes are fixed literals (the writers copy them as stored): tar files with a digest
    that depends on the writer only."""

    def __init__(self):
        super().__init__(["a", "b", "c"], "golden", CROP)

    def __len__(self) -> int:
        return 5

    def source(self, index: int):
        return (b"\x89PNG" if index % 2 else b"\xff\xd8") + bytes([index]) * 40, index % 3, f"golden sample {index}"

    @property
    def targets(self) -> list[int]:
        return [i % 3 for i in range(5)]


class _EncodedPairs(SegmentationDataset):
    def __init__(self):
        super().__init__(["x", "y"], [(1, 2, 3), (4, 5, 6)], "golden", SegCrop(size=8, train=False))

    def __len__(self) -> int:
        return 3

    def source(self, index: int):
        return b"\xff\xd8" + bytes([index]) * 30, b"\x89PNG" + bytes([index]) * 9, f"image {index}", f"mask {index}"


# sha256[:16] of each tar as 8cd809b's writers wrote it (time.time pinned; the bytes also depend on webdataset's
# TarWriter and Python's tarfile, pinned by constraints/): a change in what a writer puts on disk shows here
GOLDEN = {
    "cls/shard-000000.tar": "a3ffc2e033a196e0",
    "cls/shard-000001.tar": "01c233303df24e3d",
    "cls/shard-000002.tar": "4662848d13ba2696",
    "seg/shard-000000.tar": "3557a7ca39485d1d",
    "seg/shard-000001.tar": "fd94f86d1129b2bc",
    "caps/00000.tar": "cfebd555e087e801",
    "caps/00001.tar": "b54222949f99dfef",
}


def test_the_writers_tar_files_are_byte_identical_to_those_before_the_shared_writer(tmp_path, monkeypatch):
    import hashlib
    import time

    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5)
    write_shards(_Encoded(), tmp_path / "cls", shard_size=2, seed=3, progress=False)
    write_segmentation_shards(_EncodedPairs(), tmp_path / "seg", shard_size=2, seed=None)
    write_caption_shards([(png_bytes, f"caption {i} é") for i, png_bytes in
                          enumerate(_Encoded().source(i)[0] for i in range(3))], tmp_path / "caps", shard_size=2)
    monkeypatch.undo()
    written = {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
               for p in sorted(tmp_path.rglob("*.tar"))}
    assert written == GOLDEN


def test_one_scanner_by_one_rule_with_what_each_kind_declares(tmp_path):
    """A key none of whose members is a column: a sample lacking every column in classification and segmentation
    shards, ignored in caption shards (img2dataset's other members); the first member of a column wins; a cut tar
    keeps ('skip') the samples complete before the cut."""
    stray = tmp_path / "stray.tar"
    stray.write_bytes(tar_bytes({"a.png": png(1), "a.cls": b"1", "a.txt": b"a caption", "b.xyz": b"?"}))
    with pytest.raises(DatasetFormatError, match=r"stray\.tar: sample 'b' has no an image \(.jpg\|.png\|.webp\) "
                                                 r"and no a label"):
        index_tar(stray, ShardDataset.KIND)
    with pytest.warns(UserWarning) as caught:
        assert index_tar(stray, SegmentationShardDataset.KIND, "skip").keys == []
    assert [str(w.message).split(": ", 2)[2] for w in caught] == [
        "sample 'a' has no mask (.seg.png)", "sample 'b' has no image (.jpg|.png|.webp) and no mask (.seg.png)"]
    pairs = index_tar(stray, CaptionShardDataset.KIND)
    assert pairs.keys == ["a"] and pairs.captions == ["a caption"] and pairs.members == ["a.png"]
    doubled = tmp_path / "doubled.tar"
    doubled.write_bytes(tar_bytes({"a.jpg": b"first", "a.png": png(2), "a.cls": b"2", "a.json": b'{"label": 0}'}))
    index = index_tar(doubled, ShardDataset.KIND)
    assert index.image.tolist() == [[512, 5]] and index.labels.tolist() == [2]
    whole = tar_bytes({f"k{i}.{ext}": png(i) if ext == "png" else str(i).encode() for i in range(3)
                       for ext in ("cls", "png")})
    (tmp_path / "whole.tar").write_bytes(whole)
    last = scan_tar_members(tmp_path / "whole.tar")[0][-1]  # k2.png
    for end, kept in ((last.offset + last.size // 2, ["k0", "k1"]), (last.offset + last.size, ["k0", "k1", "k2"])):
        (tmp_path / "cut.tar").write_bytes(whole[:end])  # in k2.png's data; after it, before the end blocks
        with pytest.warns(UserWarning, match="cut.tar: truncated"):
            assert index_tar(tmp_path / "cut.tar", ShardDataset.KIND, "skip").keys == kept
