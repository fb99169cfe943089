"""Prompt templates and class names for zero-shot classification, both read from plain text files so that they can
be replaced without touching code.

Templates: one per line, `{}` marking where the class name goes (exactly once, no other braces, so
`template.format(name)` is always safe); blank lines and lines starting with `#` are skipped. The shipped default is
`DEFAULT_TEMPLATES_FILE` (vitlab/data/templates/photo.txt).

Class names: one per line, or ImageNet's `LOC_synset_mapping.txt` (`n01440764 tench, Tinca tinca`: the WordNet id,
then the synonyms; the first synonym is the name); or the sub-folders of an ImageFolder tree, in the order
`scan_image_folder` numbers its labels.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ._locate import DatasetFormatError, MissingFileError

__all__ = ["read_templates", "DEFAULT_TEMPLATES_FILE", "class_names_from_file", "imagefolder_class_names"]

DEFAULT_TEMPLATES_FILE = Path(__file__).resolve().parent / "templates" / "photo.txt"
_SYNSET_LINE = re.compile(r"^n\d{8}\s+(\S.*)$")  # `n01440764 tench, Tinca tinca`


def _content_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank, non-comment lines of a UTF-8 text file."""
    if not path.is_file():
        raise MissingFileError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({err})") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise DatasetFormatError(f"{path}: no {what} lines (only blank lines and # comments)")
    return lines


def read_templates(path: str | os.PathLike = DEFAULT_TEMPLATES_FILE) -> list[str]:
    """The prompt templates of `path`, in file order. A line without exactly one `{}`, or with other braces, is a
    `DatasetFormatError` naming the file, the line number and its text."""
    path = Path(path)
    templates = []
    for number, line in _content_lines(path, "template"):
        if line.count("{}") != 1 or "{" in line.replace("{}", "") or "}" in line.replace("{}", ""):
            raise DatasetFormatError(f"{path}, line {number}: template {line!r} must contain '{{}}' exactly once "
                                     "(where the class name goes) and no other braces")
        templates.append(line)
    return templates


def class_names_from_file(path: str | os.PathLike) -> list[str]:
    """Class names in file order, label i ↔ line i: one name per line, or, when every line starts with a WordNet
    id, ImageNet's LOC_synset_mapping.txt format (`n01440764 tench, Tinca tinca` → 'tench'). Blank lines and
    `#` comments are skipped."""
    lines = [line for _, line in _content_lines(Path(path), "class name")]
    matches = [_SYNSET_LINE.match(line) for line in lines]
    if all(matches):
        return [match.group(1).split(",")[0].strip() for match in matches]
    return lines


def imagefolder_class_names(root: str | os.PathLike) -> list[str]:
    """Readable names of an ImageFolder tree's classes: its sub-folder names, sorted as `scan_image_folder` sorts
    them (so name i belongs to label i), with '_' shown as a space."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"missing folder {root} (expected class sub-folders)")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise DatasetFormatError(f"{root}: no class sub-folders")
    return [name.replace("_", " ") for name in folders]
