"""User-named input files cannot hang a reader or exhaust memory, and bad caption tables / images fail with one line
naming the file: devices and FIFOs are refused (regular files only), image files are read with a size bound, csv
fields may be long captions, non-UTF-8 tables and decompression bombs name the file and position."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.cli import main
from vitlab.data import DatasetFormatError, DecodeCrop
from vitlab.data.decode import ImageDecodeError
from vitlab.data.image_text import CsvImageTextDataset, read_caption_table
from vitlab.interpret.zeroshot import load_clip_images

REPO = Path(__file__).resolve().parents[1]
KW_ARGS = ["--model-kwargs", "embed_dim=48", "depth=2", "num_heads=3", "patch_size=8", "img_size=32", "num_classes=7"]

# Reads row 1 (/dev/zero) and row 2 (a FIFO nobody writes) of a caption table under a 4 GiB address-space cap.
_READ_BOTH = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
import torch
from vitlab.data import DecodeCrop
from vitlab.data.image_text import CsvImageTextDataset
data = CsvImageTextDataset(sys.argv[1], lambda texts: torch.zeros(len(texts), 4), DecodeCrop(size=16, train=False))
for i in range(len(data)):
    try:
        data[i]
    except Exception as err:
        print(type(err).__name__, err)
"""


def _tokens(texts):
    return torch.zeros(len(texts), 4, dtype=torch.long)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_caption_table_naming_a_device_or_a_fifo_is_refused_quickly(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "t.tsv").write_text("filepath\ttitle\n/dev/zero\tzeros\npipe.png\tnobody writes\n")
    proc = subprocess.run([sys.executable, "-c", _READ_BOTH, str(tmp_path / "t.tsv")], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].startswith("DatasetFormatError") and "t.tsv, row 2" in lines[0] and "/dev/zero" in lines[0]
    assert "not a regular file" in lines[0]
    assert "t.tsv, row 3" in lines[1] and "pipe.png" in lines[1] and "not a regular file" in lines[1]


def test_image_files_are_read_with_a_size_bound(tmp_path):
    from vitlab.data.decode import read_file_bytes

    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 1000)
    assert read_file_bytes(path, limit=1000) == b"\0" * 1000
    with pytest.raises(ImageDecodeError, match="big.png: file larger than 999 bytes"):
        read_file_bytes(path, limit=999)
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        read_file_bytes(tmp_path)


def test_long_captions_and_non_utf8_tables(tmp_path):
    long = tmp_path / "long.tsv"
    long.write_text("filepath\ttitle\na.png\t" + "x" * 200_000 + "\n")  # over csv's default 131072-byte field
    assert read_caption_table(long)[0][1] == "x" * 200_000
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"filepath\ttitle\na.png\tok\nb.png\tbad \xff\n")
    with pytest.raises(DatasetFormatError, match=r"bad.tsv: line 3, byte offset 34 is not UTF-8"):
        read_caption_table(bad)


def test_cli_decompression_bomb_names_the_image(tmp_path, capsys, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: Pillow's DecompressionBombError
    model = vitlab.create_model("vit_tiny_patch4_32", embed_dim=48, depth=2, num_heads=3, patch_size=8, img_size=32,
                                num_classes=7)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    base = ["--model", "vit_tiny_patch4_32", "--out", str(tmp_path / "o"), *KW_ARGS]
    for command in ("attention", "segment"):
        assert main([command, str(tmp_path / "vit.pth"), str(bomb), *base]) == 2
        err = capsys.readouterr().err
        assert "bomb.png" in err and "decompression bomb" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ImageDecodeError, match="bomb.png"):
        load_clip_images([bomb], None)  # `vitlab zeroshot` reads its images here; the bundle is never reached
    from vitlab.data.decode import open_image_file

    with pytest.raises(ImageDecodeError, match="bomb.png: .*decompression bomb"):
        open_image_file(bomb)


def test_segment_on_an_ade20k_shards_run_uses_the_runs_normalisation(tmp_path, capsys):
    """`vitlab segment RUN/best` of a segmentation run: its mean / std come from the run's segmentation.json (the
    classification registry does not hold segmentation datasets), and asking that registry says which it holds."""
    import json

    from data_fixtures import write_ade
    from vitlab.data import dataset_info
    from vitlab.interpret import load_model
    from vitlab.train import apply_overrides, get_preset, train

    write_ade(tmp_path / "data")
    assert main(["shards", "ade20k", str(tmp_path / "shards"), "--split", "training,validation",
                 "--data-dir", str(tmp_path / "data"), "--shard-size", "3"]) == 0
    train(apply_overrides(get_preset("ade20k_crate_alpha_b16_upernet"), [
        "dataset=ade20k_shards", "model=vit_tiny_patch16_224", "pretrained=false", "model_kwargs.embed_dim=32",
        "model_kwargs.depth=2", "model_kwargs.num_heads=2", "head=linear", "head_kwargs={}",
        f"data_dir={tmp_path / 'shards'}", "image_size=32", "eval_mode=whole", "batch_size=2", "steps=1",
        "warmup_steps=1", "eval_interval=1", "num_workers=0", "progress=false", f"out_dir={tmp_path / 'run'}"]))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photo)
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "run" / "best"), str(photo), "--out", str(tmp_path / "o")]) == 0, \
        capsys.readouterr().err
    meta = json.loads((tmp_path / "run" / "segmentation.json").read_text())
    model, _ = load_model(tmp_path / "run" / "best")
    assert model.pretrained_cfg["mean"] == tuple(meta["mean"]) and model.pretrained_cfg["std"] == tuple(meta["std"])
    with pytest.raises(KeyError) as err:  # UnknownDatasetError
        dataset_info("ade20k_shards")
    assert "'ade20k_shards' is not an image-classification dataset" in str(err.value)
    assert "Did you mean" not in str(err.value)
