"""CLIP training through the engine: Fashion-MNIST captions (real data, captioned on the device, zero-shot with
held-out templates), captioned image tables and shards (encoded, retrieval recall), the frozen text tower, resume,
`vitlab eval`, `vitlab zeroshot`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.cli import main
from vitlab.data import write_caption_shards
from vitlab.data.templates import DEFAULT_TEMPLATES_FILE, read_templates
from vitlab.text import CaptionTokenizer
from vitlab.text.tokenizers import BPETokenizer
from vitlab.train import apply_overrides, get_preset, train
from vitlab.train.tasks.clip import build_clip_tokenizer
from vitlab.train.config import OverrideError

TINY = ["model_kwargs.image_kwargs={'patch_size': 7, 'embed_dim': 32, 'depth': 2, 'num_heads': 2}",
        "model_kwargs.text_kwargs={'width': 32, 'layers': 1, 'heads': 2, 'context_length': 32}",
        "model_kwargs.embed_dim=32", "batch_size=32", "train_subset=128", "eval_subset=64", "epochs=2",
        "eval_every=1", "log_every=2", "progress=false", "num_workers=0"]


def fashion_run(tmp_path, *extra, preset="fashion_mnist_clip_crate_alpha"):
    config = apply_overrides(get_preset(preset), TINY + [f"out_dir={tmp_path / 'run'}", *extra])
    return config, train(config)


def test_fashion_captions_train_and_zero_shot_with_held_out_templates(tmp_path, capsys):
    config, result = fashion_run(tmp_path)
    assert result["step"] == 8 and 0 <= result["zeroshot_top1"] <= result["zeroshot_top5"] <= 100
    assert np.isfinite(result["eval_loss"])
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "zeroshot_top1" in json.loads(line)]
    assert len(evals) == 2 and result["best_zeroshot_top1"] == max(e["zeroshot_top1"] for e in evals)
    meta = json.loads((tmp_path / "run" / "clip.json").read_text())
    templates = read_templates(DEFAULT_TEMPLATES_FILE)
    assert meta["templates"] == templates[-5:]  # the held-out templates are the zero-shot ones
    assert meta["class_names"][0] == "T-shirt/top" and meta["in_chans"] == 1 and meta["image_size"] == 28
    assert (tmp_path / "run" / "tokenizer").is_dir()
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"zero-shot classification: top-1 {result['best_zeroshot_top1']:.2f}%" in out  # best/ evaluated
    image = tmp_path / "item.png"
    from vitlab.data import load_dataset

    Image.fromarray(load_dataset("fashion_mnist", "test").images[0, 0].numpy()).save(image)
    assert main(["zeroshot", str(tmp_path / "run"), str(image), "--classes", "ankle boot,bag,trouser",
                 "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("3 classes × 5 templates") and lines[1].startswith(str(image))
    shares = [float(part.rsplit(" ", 1)[1].rstrip("%")) for part in lines[1].split(": ", 1)[1].split(", ")]
    assert len(shares) == 3 and abs(sum(shares) - 100) < 0.5 and shares == sorted(shares, reverse=True)


def test_training_captions_never_use_held_out_templates(tmp_path):
    from vitlab.train.tasks.clip import build_clip_task
    from vitlab.train.distributed import DistInfo

    config = apply_overrides(get_preset("fashion_mnist_clip_crate_alpha"), TINY)
    data = build_clip_task(config, DistInfo(0, 1, 0, torch.device("cpu")))
    templates = read_templates(DEFAULT_TEMPLATES_FILE)
    train_text = set(data.tokenizer.decode(data.caption_table.flatten(0, 1)))
    eval_text = set(data.tokenizer.decode(data.eval_caption_table.flatten(0, 1)))
    assert train_text == {t.format(n) for t in templates[:-5] for n in data.zeroshot.class_names}
    assert eval_text == {t.format(n) for t in templates[-5:] for n in data.zeroshot.class_names}
    labels = torch.tensor([0, 9, 3])
    tokens = data._captions(labels, data.caption_table, torch.Generator().manual_seed(0))
    for text, label in zip(data.tokenizer.decode(tokens), labels.tolist()):
        assert data.zeroshot.class_names[label] in text


def test_frozen_text_tower_does_not_move(tmp_path):
    from safetensors.torch import load_file

    fashion_run(tmp_path / "a")
    start = tmp_path / "a" / "run" / "last" / "model.safetensors"
    fashion_run(tmp_path / "b", "freeze_text=true", f"checkpoint={start}", "epochs=1")
    before, after = load_file(str(start)), load_file(str(tmp_path / "b" / "run" / "last" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))


def _caption_images(folder, n=48):
    """Images whose colour the caption names: retrieval has something to find."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        name = list(colours)[i % 4]
        array = np.clip(np.array(colours[name])[None, None] + rng.integers(-20, 20, (40, 48, 3)), 0, 255)
        path = folder / f"img{i}.png"
        Image.fromarray(array.astype(np.uint8)).save(path)
        pairs.append((path, f"a {name} picture number {i}"))
    return pairs


@pytest.fixture
def caption_root(tmp_path):
    root = tmp_path / "captions"
    (root / "images").mkdir(parents=True)
    pairs = _caption_images(root / "images")
    for split, chosen in (("train", pairs[:32]), ("val", pairs[32:])):
        lines = ["filepath\ttitle"] + [f"images/{p.name}\t{c}" for p, c in chosen]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root, pairs


CAPTION_RUN = ["model=clip", "model_kwargs.image_model=vit_tiny_patch4_32",
               "model_kwargs.image_kwargs={'patch_size': 8, 'embed_dim': 32, 'depth': 1, 'num_heads': 2}",
               "model_kwargs.text_kwargs={'width': 32, 'layers': 1, 'heads': 2, 'context_length': 16}",
               "model_kwargs.embed_dim=16", "tokenizer=bpe:300", "context_length=16", "image_size=32",
               "heldout_templates=0", "augment.hflip=false", "batch_size=16", "epochs=2", "eval_every=1",
               "log_every=1", "progress=false", "num_workers=0", "train_split=train", "eval_split=val"]


@pytest.mark.parametrize("layout", ["table", "shards"])
def test_captioned_images_train_with_retrieval_recall(tmp_path, caption_root, layout, capsys):
    root, pairs = caption_root
    if layout == "shards":
        shards = tmp_path / "shards"
        write_caption_shards(pairs[:32], shards / "train", shard_size=10)
        write_caption_shards(pairs[32:], shards / "val", shard_size=10)
        root = shards
    config = apply_overrides(get_preset("fashion_mnist_clip_vit"),
                             CAPTION_RUN + [f"dataset=image_text:{root}", f"out_dir={tmp_path / 'run'}"])
    result = train(config)
    assert result["step"] == 4 and np.isfinite(result["eval_loss"])
    for k in (1, 5, 10):
        assert 0 <= result[f"image_to_text_r{k}"] <= 100 and 0 <= result[f"text_to_image_r{k}"] <= 100
    assert result["image_to_text_r10"] >= result["image_to_text_r1"]
    assert "zeroshot_top1" not in result and result["best_eval_loss"] <= result["eval_loss"] + 1e-9
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert "retrieval recall@1: image→text" in capsys.readouterr().out


def test_caption_tokenizer_is_clip_formatted_and_its_training_deterministic():
    texts = ["a photo of a dress.", "a bag, close up"]
    one, two = (build_clip_tokenizer("bpe:300", texts * 5, 8) for _ in range(2))
    assert torch.equal(one(texts), two(texts))  # a rebuilt run (eval, resume) tokenizes as the original
    ids = one(["a photo of a dress and a very long tail of words"])
    assert ids.shape == (1, 8) and ids[0, 0] == one.sot_token_id and ids[0, -1] == one.eot_token_id
    assert ids[0].argmax() == 7  # CLIP's argmax pooling finds the end of text
    short = one(["bag"])[0]
    assert short[short.argmax()] == one.eot_token_id and (short[short.argmax() + 1:] == 0).all()
    assert isinstance(one, CaptionTokenizer) and one.vocab_size == one.tokenizer.vocab_size + 3
    with pytest.raises(ValueError, match="cannot feed a CLIP text tower"):
        build_clip_tokenizer("char", texts, 8)


def test_clip_configs_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="needs a CLIP model"):
        train(apply_overrides(get_preset("fashion_mnist_clip_crate_alpha"),
                              TINY[-8:] + ["model=vit_tiny_patch4_32", "model_kwargs={}", f"out_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="heldout_templates=40"):
        fashion_run(tmp_path, "heldout_templates=40")
    with pytest.raises(ValueError, match="has 434 tokens, the text tower's vocabulary 64"):
        fashion_run(tmp_path, "tokenizer=bpe:1000",
                    "model_kwargs.text_kwargs={'width': 32, 'layers': 1, 'heads': 2, 'context_length': 32, "
                    "'vocab_size': 64}")
    with pytest.raises(ValueError, match="augment.random_erasing does not apply"):
        fashion_run(tmp_path, "augment.random_erasing=0.25")
    with pytest.raises(OverrideError, match="context_length"):
        apply_overrides(get_preset("fashion_mnist_clip_crate_alpha"), ["context_length=-1"])


def test_zero_shot_on_an_imagefolder_and_a_higher_resolution_fine_tune(tmp_path, caption_root, capsys):
    """image_text training evaluated zero-shot on an ImageFolder (class names from its folders), then fine-tuned
    at a larger image size from those weights (CLIPA's 84 → 224 px step: positions interpolated)."""
    root, pairs = caption_root
    folder = tmp_path / "colours"
    for i, (path, caption) in enumerate(pairs[32:]):
        colour = caption.split()[1]
        (folder / "val" / f"{colour}_thing").mkdir(parents=True, exist_ok=True)
        Image.open(path).save(folder / "val" / f"{colour}_thing" / f"{i}.png")
    zeroshot = ["zeroshot_dataset=imagefolder", "zeroshot_split=val", f"data_dir={folder}"]
    config = apply_overrides(get_preset("fashion_mnist_clip_vit"),
                             CAPTION_RUN + zeroshot + [f"dataset=image_text:{root}", f"out_dir={tmp_path / 'low'}"])
    low = train(config)
    assert 0 <= low["zeroshot_top1"] <= 100 and "image_to_text_r1" in low and "best_zeroshot_top1" in low
    meta = json.loads((tmp_path / "low" / "clip.json").read_text())
    assert meta["class_names"] == ["blue thing", "green thing", "red thing", "yellow thing"]
    fine = apply_overrides(get_preset("fashion_mnist_clip_vit"),
                           CAPTION_RUN + zeroshot + [f"dataset=image_text:{root}", f"out_dir={tmp_path / 'high'}",
                                                     "image_size=48", f"checkpoint={tmp_path / 'low'}/best",
                                                     "epochs=1"])
    high = train(fine)
    assert np.isfinite(high["eval_loss"]) and json.loads((tmp_path / "high" / "clip.json").read_text())[
        "image_size"] == 48
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "high" / "last" / "model.safetensors"))
    assert weights["visual.pos_embed"].shape[1] == 1 + 6 * 6  # 48 px / patch 8, class token first


def test_wordnet_id_folders_need_class_names(tmp_path, caption_root):
    root, pairs = caption_root
    for i, wnid in enumerate(["n01440764", "n01443537"]):
        (tmp_path / "inet" / "val" / wnid).mkdir(parents=True)
        Image.open(pairs[i][0]).save(tmp_path / "inet" / "val" / wnid / "x.png")
    config = apply_overrides(get_preset("fashion_mnist_clip_vit"),
                             CAPTION_RUN + ["zeroshot_dataset=imagefolder", f"data_dir={tmp_path / 'inet'}",
                                            f"dataset=image_text:{root}", f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="WordNet ids .* class_names=/path/to/LOC_synset_mapping.txt"):
        train(config)
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius\n")
    config.class_names = str(tmp_path / "LOC_synset_mapping.txt")
    config.epochs = 1
    train(config)
    assert json.loads((tmp_path / "run" / "clip.json").read_text())["class_names"] == ["tench", "goldfish"]
