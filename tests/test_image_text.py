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
