"""Downloads against a local HTTP server on 127.0.0.1: atomic, resumable, checksum-verified; `pretrained=True`."""
import hashlib

import pytest
import torch
from local_http import server  # noqa: F401  (the fixture)

import vitlab
from vitlab._download import ChecksumError, download, md5sum


def test_download_verifies_and_is_atomic(server, tmp_path):
    base, handler = server
    payload = bytes(range(256)) * 4000
    handler.files["/w.bin"] = payload
    dest = download(f"{base}/w.bin", tmp_path / "w.bin", sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload and not (tmp_path / "w.bin.part").exists()
    download(f"{base}/w.bin", dest)  # present: no second request
    assert len(handler.requests) == 1


def test_download_resumes_from_a_partial_file(server, tmp_path):
    base, handler = server
    payload = b"0123456789" * 50000
    handler.files["/big.bin"] = payload
    (tmp_path / "big.bin.part").write_bytes(payload[:123457])
    download(f"{base}/big.bin", tmp_path / "big.bin", sha256=hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "big.bin").read_bytes() == payload
    assert handler.requests == [("/big.bin", "bytes=123457-")]


def test_corrupt_download_is_removed_and_named(server, tmp_path):
    base, handler = server
    handler.files["/bad.bin"] = b"corrupted bytes"
    expected = hashlib.sha256(b"the real file").hexdigest()
    with pytest.raises(ChecksumError, match=expected):
        download(f"{base}/bad.bin", tmp_path / "bad.bin", sha256=expected)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()


def test_md5_is_verified_too(server, tmp_path):
    base, handler = server
    handler.files["/a.tar.gz"] = b"archive bytes"
    dest = download(f"{base}/a.tar.gz", tmp_path / "a.tar.gz", md5=hashlib.md5(b"archive bytes").hexdigest())
    assert md5sum(dest) == hashlib.md5(b"archive bytes").hexdigest()
    handler.files["/b.tar.gz"] = b"other bytes"
    expected = hashlib.md5(b"archive bytes").hexdigest()
    with pytest.raises(ChecksumError, match=f"md5 .* does not match the expected {expected}"):
        download(f"{base}/b.tar.gz", tmp_path / "b.tar.gz", md5=expected)
    assert not list(tmp_path.glob("b.tar.gz*"))


def test_missing_url_is_a_clear_error(server, tmp_path):
    base, _ = server
    with pytest.raises(OSError, match="404"):
        download(f"{base}/nothing.pth", tmp_path / "nothing.pth")


def test_pretrained_downloads_and_converts_the_official_file(server, tmp_path, monkeypatch):
    from test_convert import CRATE_KW, official_crate_alpha_forward, official_crate_alpha_state_dict

    base, handler = server
    sd = official_crate_alpha_state_dict()
    path = tmp_path / "src.pth"
    torch.save(sd, path)
    handler.files["/torch/crate_alpha_B16.pth"] = path.read_bytes()
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    kwargs = dict(pretrained=True, pretrained_cfg_overlay={"url": f"{base}/torch/crate_alpha_B16.pth", "num_classes": 7},
                  **CRATE_KW)
    model = vitlab.create_model("crate_alpha_b16", **kwargs).eval()
    assert (tmp_path / "cache" / "weights" / "crate_alpha_B16.pth").is_file()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), official_crate_alpha_forward(sd, x, heads=3, depth=2), rtol=1e-5, atol=1e-5)
    vitlab.create_model("crate_alpha_b16", **kwargs)  # second time from the cache
    assert len(handler.requests) == 1
    # a different class count keeps a fresh head and loads the rest
    fresh_head = vitlab.create_model("crate_alpha_b16", **{**kwargs, "num_classes": 4})
    assert fresh_head.head.out_features == 4


def test_pretrained_without_published_weights_says_so():
    with pytest.raises(ValueError, match="no pretrained weights are published for crate_tiny_patch16_224"):
        vitlab.create_model("crate_tiny_patch16_224", pretrained=True, depth=1)
