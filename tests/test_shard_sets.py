"""Shard sets that cannot lie (issue 23): an index.npz that follows in-place edits, all-or-nothing writes for the
three shard writers (classification, segmentation, captions), and hostile labels, offsets, URLs and full disks."""
import errno
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

import vitlab.data.shards as shards_module
from vitlab.data import (DatasetFormatError, DecodeCrop, ShardDataset, TensorImageDataset, write_caption_shards,
                         write_shards)
from vitlab.data.image_text import CaptionShardDataset
from vitlab.data.shard_set import STAGING_FOLDER, IncompleteShardSetError, ShardWriteError

def png_bytes(colour) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


ROOT = Path(__file__).resolve().parents[1]
CROP = DecodeCrop(8, train=False)


def tiny(n: int = 40, label_offset: int = 0) -> TensorImageDataset:
    images = torch.arange(n * 64, dtype=torch.int64).reshape(n, 1, 8, 8).remainder(256).to(torch.uint8)
    return TensorImageDataset(images, (torch.arange(n) + label_offset) % 10, [f"c{i}" for i in range(10)], "toy",
                              (0.5,), (0.25,))


def load(folder: Path) -> ShardDataset:
    return ShardDataset.from_spec(str(folder), None, CROP)


def by_key(dataset: ShardDataset) -> dict[str, int]:
    return {key: int(label) for ix in dataset.shards for key, label in zip(ix.keys, ix.labels)}


def on_disk(dataset: ShardDataset) -> dict[str, int]:
    """The labels the shard files of `dataset` hold now (their tar members, not any cached index)."""
    return by_key(ShardDataset([ix.path for ix in dataset.shards], CROP))


def test_a_shard_relabelled_in_place_with_the_same_size_is_read_with_its_new_label(tmp_path):
    out = write_shards(tiny(), tmp_path / "set", shard_size=10, progress=False)
    before = by_key(load(out))
    shard = sorted(out.glob("*.tar"))[1]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".cls"))
    key = member.name.split(".")[0]
    new = str((before[key] + 3) % 10).encode()
    assert len(new) == member.size  # the same size: only the content changes
    time.sleep(0.05)  # past the file system's timestamp tick, as any real edit after a write is
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(new)
    after = by_key(load(out))
    assert after[key] == int(new) and after[key] != before[key]
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}


def _fail_after(monkeypatch, calls: int) -> None:
    """Makes the classification writer raise after `calls` shards are complete (inside the write)."""
    real, seen = shards_module.index_shard, []

    def index_then_fail(path, on_error="raise"):
        seen.append(path)
        if len(seen) > calls:
            raise RuntimeError("interrupted")
        return real(path, on_error)

    monkeypatch.setattr(shards_module, "index_shard", index_then_fail)


def test_an_interrupted_first_write_leaves_nothing_a_reader_accepts(tmp_path, monkeypatch):
    _fail_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_shards(tiny(), tmp_path / "set", shard_size=10, progress=False)
    monkeypatch.undo()
    assert not list((tmp_path / "set").glob("*.tar")) and not (tmp_path / "set" / STAGING_FOLDER).exists()
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "set")


def test_an_interrupted_overwrite_keeps_the_old_set_whole(tmp_path, monkeypatch):
    out = write_shards(tiny(40), tmp_path / "set", shard_size=10, progress=False)
    old = by_key(load(out))
    _fail_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_shards(tiny(40, label_offset=5), out, shard_size=10, progress=False, overwrite=True)
    monkeypatch.undo()
    assert by_key(load(out)) == old and on_disk(load(out)) == old
    write_shards(tiny(40, label_offset=5), out, shard_size=10, progress=False, overwrite=True)
    assert by_key(load(out)) == {k: (v + 5) % 10 for k, v in old.items()}


_SLOW_WRITE = """
import sys, time
import vitlab.data.shards as shards
real = shards._encoded_sample
def slow(dataset, index):
    time.sleep(0.01)
    return real(dataset, index)
shards._encoded_sample = slow
from vitlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_during_write(folder: Path, out: Path, *extra: str) -> None:
    """Runs `vitlab shards imagefolder OUT --shard-size 2` (slowed down) and kills it with SIGKILL once the write
    has completed three shards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, "shards", "imagefolder", str(out), "--data-dir",
                                str(folder), "--shard-size", "2", *extra], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    staging = out / "train" / STAGING_FOLDER / "new"
    deadline = time.monotonic() + 60
    while len(list(staging.glob("*.tar"))) < 3:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _photos(root: Path, n: int) -> Path:
    from PIL import Image

    for k in range(2):
        (root / "train" / f"c{k}").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i % 256, 100 * k, 0)).save(root / "train" / f"c{k}" / f"{i}.png")
    return root


def test_vitlab_shards_killed_mid_write_is_refused_first_and_keeps_the_old_set_on_overwrite(tmp_path):
    folder = _photos(tmp_path / "images", 15)
    _kill_during_write(folder, tmp_path / "out")
    with pytest.raises(IncompleteShardSetError, match=r"out/train: an interrupted shard write .* re-run `vitlab "
                                                      r"shards`"):
        load(tmp_path / "out" / "train")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "vitlab", "shards", "imagefolder", str(tmp_path / "out"),
                           "--data-dir", str(folder), "--shard-size", "4", "--overwrite"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    old = load(tmp_path / "out" / "train")
    assert len(old) == 30 and old.shard_sizes == [4] * 7 + [2]
    _kill_during_write(folder, tmp_path / "out", "--overwrite", "--seed", "1")
    again = load(tmp_path / "out" / "train")
    assert again.shard_sizes == old.shard_sizes and by_key(again) == on_disk(again) == by_key(old)


def test_caption_shards_are_written_all_or_nothing(tmp_path, monkeypatch):
    import vitlab.data.image_text as image_text
    pairs = [(png_bytes((i, i, i)), f"grey {i}") for i in range(6)]
    write_caption_shards(pairs, tmp_path / "caps", shard_size=2)
    real, calls = image_text._image_member, []

    def fail_late(image):
        calls.append(1)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image)

    monkeypatch.setattr(image_text, "_image_member", fail_late)
    with pytest.raises(ShardWriteError, match=r"caps: writing the shard set failed \(ENOSPC"):
        write_caption_shards(pairs[::-1], tmp_path / "caps", shard_size=2, overwrite=True)
    tokenizer = lambda texts: torch.zeros(len(texts), 4, dtype=torch.long)  # noqa: E731
    data = CaptionShardDataset(tmp_path / "caps", tokenizer, CROP)
    assert data.captions == [f"grey {i}" for i in range(6)]  # the old set, whole
    (tmp_path / "caps" / STAGING_FOLDER / "new").mkdir(parents=True)  # as a kill -9 of a first write leaves it
    for tar in (tmp_path / "caps").glob("*.tar"):
        tar.unlink()
    with pytest.raises(IncompleteShardSetError, match="caps: an interrupted shard write"):
        CaptionShardDataset(tmp_path / "caps", tokenizer, CROP)


def test_a_full_disk_removes_the_partial_set_and_names_the_folder_and_errno(tmp_path, monkeypatch):
    from webdataset import TarWriter

    real, calls = TarWriter.write, []

    def write_until_full(self, sample):
        calls.append(1)
        if len(calls) > 15:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sample)

    monkeypatch.setattr(TarWriter, "write", write_until_full)
    with pytest.raises(ShardWriteError) as caught:
        write_shards(tiny(), tmp_path / "set", shard_size=10, progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "set") in message and "ENOSPC" in message
    assert [p.name for p in (tmp_path / "set").iterdir()] == []  # no .tar.tmp, no staging folder left


def _one_shard(folder: Path, label: bytes) -> Path:
    folder.mkdir()
    (folder / "a.tar").write_bytes(tar_bytes({"k1.png": png_bytes((1, 2, 3)), "k1.cls": b"1",
                                              "k2.png": png_bytes((1, 2, 3)), "k2.cls": label}))
    return folder


_LOAD_BOUNDED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a class list of 10**12 names cannot fit
from vitlab.data import DecodeCrop, ShardDataset
try:
    ShardDataset.from_spec(sys.argv[1], None, DecodeCrop(8, train=False))
except Exception as err:
    print(type(err).__name__, err)
"""


@pytest.mark.parametrize("label", [b"999999999999", b"123456789012345678901234567890", b"-99999999999999999999999"])
def test_a_huge_cls_label_is_one_line_naming_the_shard_and_member(tmp_path, label):
    folder = _one_shard(tmp_path / "foreign", label)
    done = subprocess.run([sys.executable, "-c", _LOAD_BOUNDED, str(folder)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.startswith("DatasetFormatError "), done.stdout + done.stderr[-2000:]
    assert "foreign/a.tar: k2.cls: unreadable label" in done.stdout and "beyond" in done.stdout
    assert done.stdout.count("\n") == 1


def test_a_label_outside_the_index_classes_names_the_shard_and_key(tmp_path):
    out = write_shards(tiny(), tmp_path / "set", shard_size=10, progress=False)
    index = json.loads((out / "index.json").read_text())
    index["vitlab"]["classes"] = index["vitlab"]["classes"][:9]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetFormatError, match=r"set/shard-00000\d.tar: sample '\d+' has label 9, outside 0 … 8"):
        load(out)


@pytest.mark.parametrize("field, value", [("offset", -5), ("size", 10**12)])
def test_a_crafted_index_npz_offset_is_refused_naming_the_file(tmp_path, field, value):
    out = write_shards(tiny(), tmp_path / "set", shard_size=10, progress=False)
    with np.load(out / "index.npz") as npz:
        table = {k: npz[k] for k in npz.files}
    table[field][3] = value
    np.savez(out / "index.npz", **table)
    with pytest.raises(DatasetFormatError, match=r"set/index.npz: offsets of shard .*shard-000000.tar outside"):
        load(out)


@pytest.mark.parametrize("url", ["../../etc/passwd", "/etc/passwd", "sub/../../x.tar"])
def test_index_json_urls_outside_their_folder_are_refused(tmp_path, url):
    out = write_shards(tiny(), tmp_path / "set", shard_size=10, progress=False)
    index = json.loads((out / "index.json").read_text())
    index["shardlist"][0]["url"] = url
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetFormatError, match=rf"set/index.json: shard url '{url}' is not a file name inside"):
        load(out)


def test_segmentation_shards_are_written_all_or_nothing(tmp_path, monkeypatch):
    from data_fixtures import write_ade

    from vitlab.data.segmentation import ADE20KDataset, SegCrop, SegmentationShardDataset, write_segmentation_shards

    write_ade(tmp_path / "ade")
    crop = SegCrop(size=32, train=False, scale=(64, 32))
    source = ADE20KDataset(tmp_path / "ade", "training", crop)
    out = write_segmentation_shards(source, tmp_path / "seg", shard_size=1)
    old = SegmentationShardDataset.from_folder(out, crop)
    real, calls = ADE20KDataset.encoded_pair, []

    def fail_late(self, index):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("interrupted")
        return real(self, index)

    monkeypatch.setattr(ADE20KDataset, "encoded_pair", fail_late)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_segmentation_shards(source, out, shard_size=1, seed=3, overwrite=True)
    monkeypatch.undo()
    again = SegmentationShardDataset.from_folder(out, crop)
    assert [ix.keys for ix in again.shards] == [ix.keys for ix in old.shards]
    assert [again.source(i)[:2] for i in range(len(again))] == [old.source(i)[:2] for i in range(len(old))]
    (out / STAGING_FOLDER / "old").mkdir(parents=True)  # as a kill -9 during the commit leaves it
    with pytest.raises(IncompleteShardSetError, match="seg: an interrupted shard write"):
        SegmentationShardDataset.from_folder(out, crop)
