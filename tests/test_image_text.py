"""Caption tables (open_clip's CsvDataset convention) as EncodedImageDataset items, batched by EncodedLoader."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import DatasetFormatError, DecodeCrop, MissingFileError
from vitlab.data.image_text import CsvImageTextDataset
from vitlab.data.loader import EncodedLoader


def tokenizer(texts):
    """Characters as ids, 8 tokens, zero-padded: enough to check what reaches the batch."""
    out = torch.zeros(len(texts), 8, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [ord(c) for c in text[:8]]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture
def table(tmp_path):
    (tmp_path / "img").mkdir()
    rows = ["filepath\ttitle"]
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.fromarray(np.full((20, 30, 3), colour, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png\tcolour {i}")
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "train.tsv"


def test_pairs_decode_and_batch(table):
    data = CsvImageTextDataset(table, tokenizer, DecodeCrop(size=16, train=False, crop_pct=1.0))
    assert len(data) == 3 and data.captions == ["colour 0", "colour 1", "colour 2"]
    image, tokens = data[1]
    assert image.shape == (3, 16, 16) and image[1].float().mean() > 250 and image[0].float().mean() < 5
    assert tokens.tolist() == [ord(c) for c in "colour 1"]
    loader = EncodedLoader(data, 2, shuffle=False, drop_last=False, device="cpu", num_workers=0)
    images, captions = next(iter(loader))
    assert images.shape == (2, 3, 16, 16) and captions.shape == (2, 8) and captions.dtype == torch.int64


def test_bad_tables_name_the_file_and_what_was_expected(table, tmp_path):
    crop = DecodeCrop(size=16, train=False)
    with pytest.raises(MissingFileError, match="caption table not found"):
        CsvImageTextDataset(tmp_path / "nope.tsv", tokenizer, crop)
    bad = tmp_path / "bad.tsv"
    bad.write_text("path\tcaption\nimg/0.png\tx\n")
    with pytest.raises(DatasetFormatError, match="bad.tsv: header .* has no column 'filepath'"):
        CsvImageTextDataset(bad, tokenizer, crop)
    assert len(CsvImageTextDataset(bad, tokenizer, crop, image_key="path", caption_key="caption")) == 1
    (tmp_path / "img" / "2.png").unlink()
    data = CsvImageTextDataset(table, tokenizer, crop)
    with pytest.raises(DatasetFormatError, match="2.png"):
        data[2]


# ---------------------------------------------------------------------------------------------------------------
# caption shards (img2dataset / DataComp layout: <key>.jpg|png + <key>.txt)

import io  # noqa: E402
import tarfile  # noqa: E402

from vitlab.data import (CaptionShardDataset, caption_table_to_shards, is_image_text_dataset,  # noqa: E402
                         load_image_text_dataset, write_caption_shards)
from vitlab.data.shards import scan_tar_members  # noqa: E402

EVAL = DecodeCrop(size=16, train=False, crop_pct=1.0)


def png_bytes(colour, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), colour, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path, members):
    """A tar of (name, bytes) members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_table_to_shards_round_trip_equals_the_table(table, tmp_path):
    jpeg = tmp_path / "img" / "3.jpg"
    jpeg.write_bytes(png_bytes((200, 100, 50), "JPEG"))
    with open(table, "a") as handle:
        handle.write("img/3.jpg\tjpeg é caption\n")
    shards = caption_table_to_shards(table, tmp_path / "shards", shard_size=3)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar"]
    with tarfile.open(shards[1]) as tar:  # zero-padded keys, the image as stored
        assert tar.getnames() == ["000000003.jpg", "000000003.txt"]
    csv_data = CsvImageTextDataset(table, tokenizer, EVAL)
    shard_data = CaptionShardDataset(tmp_path / "shards", tokenizer, EVAL)
    assert len(shard_data) == 4 and shard_data.shard_sizes == [3, 1]
    assert shard_data.captions == csv_data.captions == ["colour 0", "colour 1", "colour 2", "jpeg é caption"]
    for i in range(4):
        (a, ta), (b, tb) = csv_data[(i, 7)], shard_data[(i, 7)]
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert shard_data.source(3)[2].endswith("00001.tar: member 000000003.jpg")
    assert shard_data.image_size == csv_data.image_size == 16 and shard_data.in_chans == 3
    assert shard_data.mean == csv_data.mean and shard_data.num_classes == csv_data.num_classes == 0
    small = shard_data.subset(2)
    assert len(small) == 2 and small.captions == csv_data.subset(2).captions == ["colour 0", "colour 1"]
    with pytest.raises(FileExistsError, match="already holds shards"):
        caption_table_to_shards(table, tmp_path / "shards")


def test_brace_pattern_bytes_input_and_loader(tmp_path):
    pairs = [(png_bytes((10 * i, 0, 0)), f"red {i}") for i in range(5)]
    write_caption_shards(pairs, tmp_path, shard_size=2, prefix="part-")
    data = CaptionShardDataset(str(tmp_path / "part-{00000..00002}.tar"), tokenizer, EVAL)
    assert data.captions == [f"red {i}" for i in range(5)] and data.shard_sizes == [2, 2, 1]
    assert len(CaptionShardDataset(str(tmp_path / "part-{00000..00001}.tar"), tokenizer, EVAL)) == 4
    loader = EncodedLoader(data, 2, shuffle=True, drop_last=True, device="cpu", num_workers=0, shuffle_buffer=3)
    batches = list(loader)
    assert len(batches) == 2
    for images, captions in batches:
        assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
        assert captions.shape == (2, 8) and captions.dtype == torch.int64
        for image, ids in zip(images, captions):  # each caption's number is its image's red level / 10
            number = int(chr(ids[4].item()))
            assert abs(image[0].float().mean().item() - 10 * number) < 2


def test_shard_errors_name_the_shard_and_member(tmp_path):
    good = png_bytes((0, 0, 0))
    no_caption = write_tar(tmp_path / "a.tar", [("k1.png", good), ("k1.txt", b"fine"), ("k2.jpg", good),
                                                ("k2.json", b"{}")])
    with pytest.raises(DatasetFormatError, match=r"a\.tar: image member k2\.jpg has no caption member k2\.txt"):
        CaptionShardDataset([str(no_caption)], tokenizer, EVAL)
    no_image = write_tar(tmp_path / "b.tar", [("k3.txt", b"lonely"), ("k4.webp", good), ("k4.txt", b"x")])
    with pytest.raises(DatasetFormatError, match=r"b\.tar: caption member k3\.txt has no image member"):
        CaptionShardDataset([str(no_image)], tokenizer, EVAL)
    latin = write_tar(tmp_path / "c.tar", [("k5.png", good), ("k5.txt", "café".encode("latin-1"))])
    with pytest.raises(DatasetFormatError, match=r"c\.tar: member k5\.txt: caption is not UTF-8"):
        CaptionShardDataset([str(latin)], tokenizer, EVAL)
    with pytest.warns(UserWarning, match="skipped"):
        data = CaptionShardDataset([str(no_caption), str(no_image), str(latin)], tokenizer, EVAL, on_error="skip")
    assert data.captions == ["fine", "x"]  # k1 and k4 kept; k2, k3, k5 left out
    broken = write_tar(tmp_path / "d.tar", [("k6.png", b"not an image"), ("k6.txt", b"broken")])
    with pytest.raises(DatasetFormatError, match=r"d\.tar: member k6\.png: unreadable image"):
        CaptionShardDataset([str(broken)], tokenizer, EVAL)[0]
    with pytest.warns(UserWarning, match=r"a\.tar: image member k2\.jpg"):
        both = CaptionShardDataset([str(broken), str(no_caption)], tokenizer, EVAL, on_error="skip")
    loader = EncodedLoader(both, 2, shuffle=False, drop_last=False, device="cpu", num_workers=0)
    with pytest.warns(UserWarning, match=r"d\.tar: member k6\.png"):
        images, captions = next(iter(loader))
    assert images.shape[0] == 1 and loader.skipped == 1


def test_missing_shards_list_what_was_looked_for(tmp_path):
    with pytest.raises(MissingFileError, match=r"no caption shards \(looked for .*\*\.tar\)"):
        CaptionShardDataset(tmp_path, tokenizer, EVAL)
    with pytest.raises(MissingFileError, match=r"matches no file \(looked for .*x-0\.tar, .*x-1\.tar"):
        CaptionShardDataset(str(tmp_path / "x-{0..1}.tar"), tokenizer, EVAL)
    write_caption_shards([(png_bytes((1, 2, 3)), "one")], tmp_path, prefix="x-")
    with pytest.raises(MissingFileError, match=r"1 of 2 caption shards are missing: .*x-00001\.tar"):
        CaptionShardDataset(str(tmp_path / "x-{00000..00001}.tar"), tokenizer, EVAL)


def test_load_image_text_dataset_resolution_order(tmp_path):
    assert is_image_text_dataset("image_text:/data/cc3m") and not is_image_text_dataset("/data/cc3m")
    assert not is_image_text_dataset(None)
    (tmp_path / "img.png").write_bytes(png_bytes((0, 255, 0)))
    write_caption_shards([(tmp_path / "img.png", "from shards")], tmp_path / "train")
    spec = f"image_text:{tmp_path}"
    assert load_image_text_dataset(spec, "train", tokenizer, EVAL).captions == ["from shards"]
    (tmp_path / "train.csv").write_text('filepath,title\nimg.png,"from, csv"\n')
    data = load_image_text_dataset(spec, "train", tokenizer, EVAL)
    assert isinstance(data, CsvImageTextDataset) and data.captions == ["from, csv"]
    (tmp_path / "train.tsv").write_text("filepath\ttitle\nimg.png\tfrom tsv\n")
    assert load_image_text_dataset(str(tmp_path), "train", tokenizer, EVAL).captions == ["from tsv"]
    with pytest.raises(MissingFileError) as err:
        load_image_text_dataset(spec, "val", tokenizer, EVAL)
    assert str(err.value) == (f"image–text split 'val' not found; looked for {tmp_path}/val.tsv, "
                              f"{tmp_path}/val.csv and {tmp_path}/val/*.tar")
    with pytest.raises(MissingFileError, match="is not a folder"):
        load_image_text_dataset(f"image_text:{tmp_path}/absent", "train", tokenizer, EVAL)


def test_cut_shard_keeps_its_complete_pairs_with_skip(tmp_path):
    shard = write_caption_shards([(png_bytes((i, i, i)), f"grey {i}") for i in range(3)], tmp_path)[0]
    last_image = [m for m in scan_tar_members(shard)[0] if m.ext == "png"][-1]
    shard.write_bytes(shard.read_bytes()[:last_image.offset + 10])  # cut inside the last sample's image
    with pytest.raises(DatasetFormatError, match=r"00000\.tar: truncated or corrupt tar"):
        CaptionShardDataset(tmp_path, tokenizer, EVAL)
    with pytest.warns(UserWarning, match="truncated"):
        data = CaptionShardDataset(tmp_path, tokenizer, EVAL, on_error="skip")
    assert data.captions == ["grey 0", "grey 1"]
