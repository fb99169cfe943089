"""What vitlab knows about each text dataset: where its files live, how they split, where to get them. Facts only."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TextDatasetInfo", "TEXT_DATASETS", "text_dataset_info", "UnknownTextDatasetError"]


class UnknownTextDatasetError(KeyError):
    """A dataset name that is not in TEXT_DATASETS (nor 'textfile:PATH')."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class TextDatasetInfo:
    """`layout`: 'single' (one text file; train = its first `train_fraction` of characters, val = the rest, as
    nanoGPT's shakespeare prepare.py), 'splits' (a file per split; `files[split]` lists the names it may have, in order
    of preference) or 'documents' (a folder of .txt documents and/or tar archives of them; val = a deterministic
    `val_fraction` of the documents, drawn with `seed` as nanoGPT's openwebtext prepare.py; each document is followed
    by the end-of-text token). `folders`: names of the dataset's folder under a data root (the first is where a
    download goes). `url` / `sha256`: the official download, where there is one. `checksums`: {file name: sha256} of
    files whose content is known (../shared/data/SOURCES.md), checked on every load."""
    name: str
    layout: str
    folders: tuple[str, ...]
    splits: tuple[str, ...]
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    train_fraction: float = 0.9
    val_fraction: float = 0.0005
    seed: int = 2357
    url: str | None = None
    sha256: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    homepage: str = ""
    how_to_get: str = ""

    @property
    def split_rule(self) -> str:
        if self.layout == "single":
            return f"train = first {self.train_fraction:.0%} of the characters, val = the rest (nanoGPT)"
        if self.layout == "documents":
            return (f"val = ceil({self.val_fraction} * documents) documents drawn by "
                    f"numpy.random.default_rng({self.seed}).permutation (nanoGPT / datasets.train_test_split), "
                    "train = the others in their original order; each document followed by <|endoftext|>")
        return "one file per split (val = the 'valid' file)"


_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# pytorch/examples word_language_model/data/wikitext-2/{valid,test}.txt (= wiki.{valid,test}.tokens), SOURCES.md
_WIKITEXT2_SHA256 = {"valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                     "test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"}


def _wikitext(name: str, folder: str, size: str, checksums: dict[str, str] | None = None) -> TextDatasetInfo:
    files = {split: (f"wiki.{file}.tokens", f"wiki.{file}.raw", f"{file}.txt")
             for split, file in (("train", "train"), ("val", "valid"), ("test", "test"))}
    return TextDatasetInfo(
        name=name, layout="splits", splits=("train", "val", "test"), files=files, checksums=checksums or {},
        folders=(folder, f"{folder}-v1", f"{folder}-raw", f"{folder}-raw-v1", name),
        homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
        how_to_get=(f"WikiText-{size} ships as {folder}-v1.zip (wiki.{{train,valid,test}}.tokens) or "
                    f"{folder}-raw-v1.zip (wiki.*.raw), also on the Hugging Face Hub as Salesforce/wikitext; put the "
                    f"files in <data root>/{folder}/ (train.txt / valid.txt / test.txt names work too)."))


TEXT_DATASETS: dict[str, TextDatasetInfo] = {
    "tinyshakespeare": TextDatasetInfo(
        name="tinyshakespeare", layout="single", folders=("tinyshakespeare", "shakespeare_char", "shakespeare"),
        splits=("train", "val"), files={"all": ("input.txt",)},
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256=_SHAKESPEARE_SHA256, checksums={"input.txt": _SHAKESPEARE_SHA256},
        homepage="https://github.com/karpathy/char-rnn",
        how_to_get=("download=true fetches it (vitlab train ... download=true; in Python prepare_text("
                    "'tinyshakespeare', download=True); 1.1 MB, sha256-verified).")),
    "wikitext2": _wikitext("wikitext2", "wikitext-2", "2", _WIKITEXT2_SHA256),
    "wikitext103": _wikitext("wikitext103", "wikitext-103", "103"),
    "openwebtext": TextDatasetInfo(
        name="openwebtext", layout="documents", folders=("openwebtext",), splits=("train", "val"),
        val_fraction=0.0005, seed=2357, homepage="https://skylion007.github.io/OpenWebTextCorpus/",
        how_to_get=("Get openwebtext.tar.xz from https://skylion007.github.io/OpenWebTextCorpus/ and unpack it so "
                    "that <data root>/openwebtext/ holds its urlsf_subset*.xz archives (tar.xz of .txt documents); a "
                    "folder of .txt documents works too. Archives are read in memory, never extracted.")),
    "textfile": TextDatasetInfo(
        name="textfile", layout="single", folders=(), splits=("train", "val"),
        how_to_get=("Any UTF-8 text file: dataset=textfile:/path/to/file.txt (in Python "
                    "prepare_text('textfile:/path/to/file.txt')).")),
}


def text_dataset_info(name: str) -> TextDatasetInfo:
    """`TEXT_DATASETS[name]`; 'textfile:PATH' gives the 'textfile' entry. Unknown names list the valid ones."""
    key = "textfile" if name.startswith("textfile:") else name
    if key not in TEXT_DATASETS or name == "textfile":
        valid = ", ".join(repr(n) for n in TEXT_DATASETS if n != "textfile")
        raise UnknownTextDatasetError(f"unknown text dataset {name!r}; valid: {valid}, 'textfile:PATH' (any UTF-8 "
                                      "text file)")
    return TEXT_DATASETS[key]
