"""Integrity of what vitlab reads: archive extraction never follows a symlink already in the destination, cached
token shards are verified (digest + id range) before training, registered digests of text sources are checked on
every load, and an explicit data_dir is never silently replaced by another data root. CPU only, small files."""
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import tar_bytes

import vitlab._files as locate
import vitlab.text.prepare as prepare_module
from vitlab._download import ChecksumError
from vitlab.data import DatasetNotFoundError, UnsafeArchiveError, extract_archive, find_data_root
from vitlab.text import TEXT_DATASETS, PreparedText, prepare_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare missing")
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 50


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data root but the ones a test makes; a private cache."""
    for name in ("cwd", "repo", "cache"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(locate, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(locate, "_SYSTEM_DATA", tmp_path / "system")
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prepare_module, "_SHARDS_VERIFIED", {}, raising=False)
    return tmp_path


# ---------------------------------------------------------------- point 11: symlinks already in the destination
@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("member", ["sub/file", "sub/deeper/file", "sub"])
def test_extraction_refuses_a_symlink_in_the_destination(tmp_path, kind, member):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(elsewhere, target_is_directory=True)
    archive = tmp_path / f"a.{'zip' if kind == 'zip' else 'tar.gz'}"
    members = {"good.txt": b"fine", member: b"evil"}
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        archive.write_bytes(tar_bytes(members, "gz"))
    with pytest.raises(UnsafeArchiveError, match=f"{archive}.*{dest / 'sub'}.*symlink"):
        extract_archive(archive, dest)
    assert list(elsewhere.rglob("*")) == []  # nothing written through the link
    assert sorted(p.name for p in dest.iterdir()) == ["sub"]  # nothing else written either, no temporary folder
    assert (dest / "sub").is_symlink()


def test_extraction_into_a_symlinked_destination_itself_is_allowed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({"sub/file": b"ok"}, "gz"))
    extract_archive(archive, tmp_path / "link")  # the destination is the caller's choice; only what is under it counts
    assert (real / "sub" / "file").read_bytes() == b"ok"


# ---------------------------------------------------------------- point 5: corrupt token caches
def _prepared(isolated) -> PreparedText:
    path = isolated / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    return prepare_text(f"textfile:{path}")


def test_shard_digest_is_recorded_and_a_same_size_corruption_is_rebuilt(isolated, monkeypatch):
    prepared = _prepared(isolated)
    shard = prepared.path("train")
    good = shard.read_bytes()
    meta = json.loads((prepared.root / "meta.json").read_text())
    assert meta["shard_sha256"]["train"] == __import__("hashlib").sha256(good).hexdigest()
    ids = np.frombuffer(good, dtype="<u2").copy()
    ids[:20] = ids[:20][::-1]  # same size, ids inside the vocabulary, wrong order: garbage a size check cannot see
    shard.write_bytes(ids.tobytes())
    monkeypatch.setattr(prepare_module, "_SHARDS_VERIFIED", {})  # a new process
    with pytest.raises(prepare_module.CorruptShardError, match=f"{shard}: sha256 .* differs"):
        PreparedText.load(prepared.root)  # no source at hand: a clear error naming the file
    rebuilt = prepare_text(f"textfile:{isolated / 't.txt'}")  # the source is there: rebuilt from it
    assert shard.read_bytes() == good and rebuilt.tokens("train").tobytes() == good


def test_ids_outside_the_vocabulary_name_the_file_the_id_and_the_size(isolated, monkeypatch):
    prepared = _prepared(isolated)
    shard = prepared.path("val")
    ids = np.frombuffer(shard.read_bytes(), dtype="<u2").copy()
    ids[7] = 60000
    shard.write_bytes(ids.tobytes())
    meta = json.loads((prepared.root / "meta.json").read_text())  # a digest that matches: only the range can tell
    meta["shard_sha256"]["val"] = __import__("hashlib").sha256(ids.tobytes()).hexdigest()
    (prepared.root / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(prepare_module, "_SHARDS_VERIFIED", {})
    with pytest.raises(prepare_module.CorruptShardError,
                       match=f"{shard}: token id 60000 .*token 7.* vocabulary of size {prepared.vocab_size}"):
        PreparedText.load(prepared.root)


def test_verification_is_paid_once_per_file_change(isolated, monkeypatch):
    prepared = _prepared(isolated)
    scans = []
    real_scan = prepare_module._scan
    monkeypatch.setattr(prepare_module, "_scan", lambda path, dtype: scans.append(path.name) or real_scan(path, dtype))
    PreparedText.load(prepared.root)
    assert scans == []  # verified while written
    monkeypatch.setattr(prepare_module, "_SHARDS_VERIFIED", {})  # a new process: the sidecar remembers
    PreparedText.load(prepared.root)
    assert scans == []
    os.utime(prepared.path("train"), ns=(1, 1))  # changed (same bytes): checked once again, then remembered
    PreparedText.load(prepared.root)
    PreparedText.load(prepared.root)
    monkeypatch.setattr(prepare_module, "_SHARDS_VERIFIED", {})
    PreparedText.load(prepared.root)
    assert scans == ["train.bin"]


# ---------------------------------------------------------------- point 9: explicit data_dir, known digests, files used
def test_explicit_data_dir_without_the_dataset_is_an_error_naming_where_it_is(isolated, monkeypatch):
    for where in ("env", "cwd/data"):
        folder = isolated / where / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        (folder / "batches.meta").write_bytes(b"")
    monkeypatch.setenv("VITLAB_DATA", str(isolated / "env"))
    (isolated / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"(?s)not in data_dir {isolated / 'empty'}.*cifar-10-batches-py.*"
                                                   f"{isolated / 'env' / 'cifar-10-batches-py'}.*Pass data_dir="):
        find_data_root("cifar10", isolated / "empty")
    assert find_data_root("cifar10") == isolated / "env" / "cifar-10-batches-py"  # no data_dir: searched
    text = isolated / "env" / "tinyshakespeare"
    text.mkdir()
    (text / "input.txt").write_text(TEXT, encoding="utf-8")
    with pytest.raises(DatasetNotFoundError, match=f"(?s)tinyshakespeare: not in data_dir .*{text}"):
        prepare_text("tinyshakespeare", data_dir=isolated / "empty")


def test_known_digest_of_a_text_source_is_checked_on_every_load(isolated):
    assert TEXT_DATASETS["tinyshakespeare"].checksums["input.txt"] == TEXT_DATASETS["tinyshakespeare"].sha256
    assert TEXT_DATASETS["wikitext2"].checksums["valid.txt"].startswith("f0737ed3")
    folder = isolated / "d" / "tinyshakespeare"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text(TEXT, encoding="utf-8")  # e.g. a truncated copy
    with pytest.raises(ChecksumError, match=f"{folder / 'input.txt'}: .*sha256 .*expected sha256 "
                                            f"{TEXT_DATASETS['tinyshakespeare'].sha256}"):
        prepare_text("tinyshakespeare", data_dir=isolated / "d")


@needs_shakespeare
def test_files_used_are_returned_and_logged(isolated, caplog):
    with caplog.at_level(logging.INFO, logger="vitlab.data"):
        prepared = prepare_text("tinyshakespeare", data_dir=SHARED)
    expected = (str(SHAKESPEARE.resolve()), f"sha256 {TEXT_DATASETS['tinyshakespeare'].sha256}")
    assert prepared.files == [expected]
    assert f"using {expected[0]} ({expected[1]})" in caplog.text


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="../shared/data/fashion-mnist missing")
def test_image_dataset_lists_the_verified_files(isolated, caplog):
    from vitlab.data import load_dataset

    with caplog.at_level(logging.INFO, logger="vitlab.data"):
        test = load_dataset("fashion_mnist", "test", data_dir=SHARED / "fashion-mnist")
    images = str((SHARED / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").resolve())
    digest = "sha256 cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"  # SOURCES.md
    assert (images, digest) in test.files and len(test.files) == 2 and f"using {images} ({digest})" in caplog.text
