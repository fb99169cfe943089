"""Prompt templates and class names read from replaceable text files."""
import pytest

from vitlab.data import (DEFAULT_TEMPLATES_FILE, DatasetFormatError, MissingFileError, class_names_from_file,
                         imagefolder_class_names, read_templates)
from vitlab.data._imagefolder import scan_image_folder


def test_shipped_templates_parse_and_format():
    templates = read_templates()
    assert DEFAULT_TEMPLATES_FILE.name == "photo.txt" and len(templates) >= 15
    assert len(set(templates)) == len(templates)
    assert all(t.format("tench").count("tench") == 1 for t in templates)


def test_template_file_comments_blank_lines_and_errors(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# mine\n\na {}.\n  an image of a {}  \n")
    assert read_templates(path) == ["a {}.", "an image of a {}"]
    for bad in ["a photo.", "a {} and a {}.", "a {0}.", "a {} {name}."]:
        path.write_text(f"a {{}}.\n# comment\n{bad}\n")
        with pytest.raises(DatasetFormatError, match=rf"t\.txt, line 3: template {bad!r}".replace("{", r"\{")):
            read_templates(path)
    path.write_text("# nothing\n\n")
    with pytest.raises(DatasetFormatError, match="no template lines"):
        read_templates(path)
    with pytest.raises(MissingFileError, match="nope.txt"):
        read_templates(tmp_path / "nope.txt")


def test_class_names_plain_and_loc_synset_mapping(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("tench\n\ngoldfish\ngreat white shark\n")
    assert class_names_from_file(plain) == ["tench", "goldfish", "great white shark"]
    loc = tmp_path / "LOC_synset_mapping.txt"
    loc.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
                   "n01484850 great white shark, white shark, man-eater, Carcharodon carcharias\n")
    assert class_names_from_file(loc) == ["tench", "goldfish", "great white shark"]


def test_imagefolder_class_names_follow_the_label_order(tmp_path):
    from PIL import Image

    for name in ["golden_retriever", "Zebra", "ant", ".hidden"]:
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
    (tmp_path / "notes.txt").write_text("not a class")
    _, classes = scan_image_folder(tmp_path)
    assert imagefolder_class_names(tmp_path) == [c.replace("_", " ") for c in classes] == \
        ["Zebra", "ant", "golden retriever"]
