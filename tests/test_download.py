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
    with pytest.warns(UserWarning, match="no sha256 is registered"):
        vitlab.create_model("crate_alpha_b16", **kwargs)  # second time from the cache
    assert len(handler.requests) == 1
    # a different class count keeps a fresh head and loads the rest
    fresh_head = vitlab.create_model("crate_alpha_b16", **{**kwargs, "num_classes": 4})
    assert fresh_head.head.out_features == 4


def test_pretrained_without_published_weights_says_so():
    with pytest.raises(ValueError, match="no pretrained weights are published for crate_tiny_patch16_224"):
        vitlab.create_model("crate_tiny_patch16_224", pretrained=True, depth=1)


def _serve_weights(server, tmp_path, monkeypatch):
    from test_convert import CRATE_KW, official_crate_alpha_state_dict

    base, handler = server
    path = tmp_path / "src.pth"
    torch.save(official_crate_alpha_state_dict(), path)
    payload = path.read_bytes()
    handler.files["/torch/w.pth"] = payload
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    return f"{base}/torch/w.pth", payload, CRATE_KW, tmp_path / "cache" / "weights"


def test_pretrained_with_a_registered_sha256_is_verified(server, tmp_path, monkeypatch):
    url, payload, kw, cache = _serve_weights(server, tmp_path, monkeypatch)
    good = hashlib.sha256(payload).hexdigest()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified file loads without the 'unverified' warning
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url, "sha256": good},
                            **kw)
    assert (cache / "w.pth").is_file()
    # the cached file corrupted afterwards: caught on the next load, removed, the error names URL and digests
    (cache / "w.pth").write_bytes(payload[:-10] + b"0123456789")
    actual = hashlib.sha256((cache / "w.pth").read_bytes()).hexdigest()
    with pytest.raises(ChecksumError, match=f"from {url}.*sha256 {actual} does not match the expected {good}"):
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url, "sha256": good},
                            **kw)
    assert not (cache / "w.pth").exists()


def test_pretrained_with_a_wrong_sha256_fails_and_leaves_nothing(server, tmp_path, monkeypatch):
    url, payload, kw, cache = _serve_weights(server, tmp_path, monkeypatch)
    wrong = hashlib.sha256(b"not these weights").hexdigest()
    actual = hashlib.sha256(payload).hexdigest()
    with pytest.raises(ChecksumError, match=f"downloaded {url} .*sha256 {actual} does not match the expected {wrong}"):
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url, "sha256": wrong},
                            **kw)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_unregistered_weights_warn_record_their_digest_and_catch_a_corrupted_cache(server, tmp_path, monkeypatch):
    url, payload, kw, cache = _serve_weights(server, tmp_path, monkeypatch)
    with pytest.warns(UserWarning, match=f"{url}: no sha256 is registered .* unverified"):
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url}, **kw)
    recorded = (cache / "w.pth.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(payload).hexdigest()
    with pytest.warns(UserWarning, match="recorded in"):
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url}, **kw)
    (cache / "w.pth").write_bytes(b"\0" * 100 + payload[100:])
    with pytest.raises(ChecksumError,
                       match=f"cached .*w.pth \\(from {url}\\) has sha256 .* but {recorded} was recorded"):
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url}, **kw)
    assert not (cache / "w.pth").exists() and not (cache / "w.pth.sha256").exists()
    with pytest.warns(UserWarning):  # a clean re-download on the next load
        vitlab.create_model("crate_alpha_b16", pretrained=True, pretrained_cfg_overlay={"url": url}, **kw)
