"""Integrity of what vitlab reads: archive extraction never follows a symlink already in the destination, cached
token shards are verified (digest + id range) before training, registered digests of text sources are checked on
every load, and an explicit data_dir is never silently replaced by another data root. CPU only, small files."""
import io
import json
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import vitlab.data._locate as locate
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
def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


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
        archive.write_bytes(_tar(members))
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
    archive.write_bytes(_tar({"sub/file": b"ok"}))
    extract_archive(archive, tmp_path / "link")  # the destination is the caller's choice; only what is under it counts
    assert (real / "sub" / "file").read_bytes() == b"ok"
