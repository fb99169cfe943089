"""Self-describing weights: a run's model.safetensors rebuilds its model alone (classifier, language model,
segmentation, CLIP), `save_pretrained` / `from_pretrained` round-trip every registry family, older runs fall back to
their config.json, and the description is plain JSON."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitlab
from vitlab.convert import load_checkpoint
from vitlab.models import SegmentationModel, create_segmentation_model
from vitlab.models._hub import METADATA_KEY, describe_architecture, model_spec, read_spec
from vitlab.train import apply_overrides, get_preset, train

sys.path.insert(0, str(Path(__file__).parent))
from test_clip_train import TINY as CLIP_TINY  # noqa: E402
from test_lm_train import needs_shakespeare, tiny_lm  # noqa: E402
from test_seg_train import TINY as SEG_TINY  # noqa: E402
from test_train import needs_fashion, tiny_run  # noqa: E402


def _spec_of(weights: Path) -> dict:
    with safe_open(str(weights), framework="pt") as handle:
        return json.loads(handle.metadata()[METADATA_KEY])


def _image_input(model, batch=2):
    size = model.patch_embed.img_hw if hasattr(model, "patch_embed") else model.backbone.patch_embed.img_hw
    chans = model.patch_embed.in_chans if hasattr(model, "patch_embed") else model.backbone.patch_embed.in_chans
    return torch.randn(batch, chans, *size, generator=torch.Generator().manual_seed(0))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _check_rebuilds(run: Path, example) -> torch.nn.Module:
    """vitlab.load(run) and create_model(checkpoint_path=...) (run dir, best/, the file) give the trained weights and
    equal outputs; returns the loaded model."""
    trained = load_file(str(run / "best" / "model.safetensors"))
    loaded = vitlab.load(run)
    assert not loaded.training
    for key, value in trained.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for source in (run / "best", run / "best" / "model.safetensors", run / "last"):
        other = vitlab.create_model(checkpoint_path=source).eval()
        with torch.no_grad():
            out_a, out_b = loaded(*example(loaded)), other(*example(other))
        if isinstance(out_a, tuple):
            for x, y in zip(out_a, out_b):
                assert torch.equal(x, y)
        elif source != run / "last":  # last/ may hold a later step than best/
            assert torch.equal(out_a, out_b)
    return loaded


@needs_fashion
def test_image_classifier_run_rebuilds_from_its_weights(tmp_path):
    config = tiny_run(tmp_path, epochs=1, eval_every=1.0, train_subset=256, eval_subset=128)
    train(config)
    run = Path(config.out_dir)
    spec = _spec_of(run / "best" / "model.safetensors")
    assert spec["architecture"] == "vit_tiny_patch4_32"
    assert spec["kwargs"] == {"num_classes": 10, "in_chans": 1, "img_size": 28, "patch_size": 7, "embed_dim": 32,
                              "depth": 2, "num_heads": 2}
    assert spec["label"].startswith("vit_tiny_patch4_32(") and "patch_size=7" in spec["label"]
    assert "num_classes" not in spec["label"]  # 10 is the registered default
    loaded = _check_rebuilds(run, lambda m: (_image_input(m),))
    # the case that failed with 55 shape mismatches: a name plus the file, its kwargs filled in from the metadata
    named = vitlab.create_model("vit_tiny_patch4_32", checkpoint_path=run / "best" / "model.safetensors").eval()
    x = _image_input(loaded)
    assert torch.equal(named(x), loaded(x))
    # a caller's kwarg wins over the file's (here one that keeps the weights loadable)
    assert vitlab.create_model(checkpoint_path=run / "best", drop_rate=0.5).head_drop.p == 0.5


@needs_shakespeare
def test_language_model_run_rebuilds_from_its_weights(tmp_path):
    config = tiny_lm(tmp_path, steps=10, eval_interval=10, warmup_steps=2)
    train(config, preset="test")
    run = Path(config.out_dir)
    spec = _spec_of(run / "best" / "model.safetensors")
    assert spec["architecture"] == "gpt_char_tiny" and spec["kwargs"]["n_embd"] == 32
    tokens = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    loaded = _check_rebuilds(run, lambda m: (tokens,))
    assert loaded.transformer.wte.weight is loaded.lm_head.weight  # still tied


@needs_fashion
def test_segmentation_run_rebuilds_backbone_and_head(tmp_path):
    config = apply_overrides(get_preset("fashion_scenes_crate_alpha_upernet"),
                             SEG_TINY + ["epochs=1", f"out_dir={tmp_path / 'run'}"])
    train(config)
    run = Path(config.out_dir)
    spec = _spec_of(run / "best" / "model.safetensors")
    assert spec["segmentation"]["head"] == "upernet" and "num_classes" not in spec["kwargs"]
    loaded = _check_rebuilds(run, lambda m: (_image_input(m),))
    assert isinstance(loaded, SegmentationModel)
    _strip_metadata(run / "best" / "model.safetensors")  # a run from before: config.json + segmentation.json
    old = vitlab.load(run / "best")
    fallback = read_spec(run / "best")["segmentation"]
    assert fallback["head"] == spec["segmentation"]["head"]
    assert fallback["num_classes"] == spec["segmentation"]["num_classes"]
    assert fallback["head_kwargs"].items() <= spec["segmentation"]["head_kwargs"].items()  # the config's (channels)
    x = _image_input(loaded)
    assert torch.equal(old(x), loaded(x))


@needs_fashion
def test_clip_run_rebuilds_both_towers(tmp_path):
    config = apply_overrides(get_preset("fashion_mnist_clip_crate_alpha"),
                             CLIP_TINY + ["epochs=1", f"out_dir={tmp_path / 'run'}"])
    train(config)
    run = Path(config.out_dir)
    spec = _spec_of(run / "best" / "model.safetensors")
    assert spec["kwargs"]["image_kwargs"]["patch_size"] == 7 and spec["kwargs"]["text_kwargs"]["width"] == 32

    def example(model):
        images = torch.randn(2, model.visual.patch_embed.in_chans, *model.visual.patch_embed.img_hw,
                             generator=torch.Generator().manual_seed(0))
        text = torch.randint(0, model.text.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
        return images, text

    loaded = _check_rebuilds(run, example)
    _strip_metadata(run / "best" / "model.safetensors")  # a run from before: config.json + the weights' shapes
    old = vitlab.load(run / "best")
    _same_weights(loaded, old)
    assert old.visual.patch_embed.img_hw == loaded.visual.patch_embed.img_hw


# -- save_pretrained / from_pretrained over every family ----------------------------------------------------------
TINY_FAMILIES = {
    "vit_tiny_patch4_32": dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, num_classes=7, in_chans=1),
    "crate_tiny_patch16_224": dict(embed_dim=32, depth=2, num_heads=2, img_size=32, num_classes=5),
    "crate_alpha_tiny_patch16_224": dict(embed_dim=32, depth=2, num_heads=2, img_size=32, num_classes=5),
    "gpt_char_tiny": dict(n_layer=1, n_head=2, n_embd=32),
    "crate_lm_char_tiny": None,
    "clip": dict(image_model="vit_tiny_patch4_32", embed_dim=16,
                 image_kwargs=dict(embed_dim=32, depth=1, num_heads=2, patch_size=8),
                 text_kwargs=dict(width=32, layers=1, heads=2, vocab_size=50, context_length=8)),
    "crate_alpha_clipa_large_patch14_224": dict(embed_dim=16, image_kwargs=dict(embed_dim=32, depth=1, num_heads=2,
                                                                                 img_size=28),
                                                text_kwargs=dict(width=32, layers=1, heads=2, vocab_size=50,
                                                                 context_length=8)),
}


def _family_input(model):
    task = model.pretrained_cfg.get("task")
    if task == "lm":
        return (torch.randint(0, model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0)),)
    if task == "clip":
        return (torch.randn(2, model.visual.patch_embed.in_chans, *model.visual.patch_embed.img_hw),
                torch.randint(0, model.text.vocab_size, (2, 8)))
    return (_image_input(model),)


def _tiny(name):
    kwargs = TINY_FAMILIES[name]
    if kwargs is None:  # the family's own tiny size; find its small knobs by name
        model_kwargs = dict(n_layer=1, n_head=2, n_embd=32)
        try:
            return vitlab.create_model(name, **model_kwargs)
        except TypeError:
            return vitlab.create_model(name)
    return vitlab.create_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(TINY_FAMILIES))
def test_save_pretrained_round_trips_every_family(tmp_path, name):
    torch.manual_seed(0)
    model = _tiny(name).eval()
    directory = model.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    assert config["architecture"] == vitlab.models.resolve_model_name(name)
    assert config["kwargs"] == json.loads(json.dumps(model.vitlab_kwargs))
    x = _family_input(model)
    for loaded in (type(model).from_pretrained(directory), vitlab.from_pretrained(directory), vitlab.load(directory),
                   vitlab.create_model(checkpoint_path=directory).eval()):
        assert type(loaded) is type(model) and not loaded.training
        _same_weights(model, loaded)
        with torch.no_grad():
            a, b = model(*x), loaded(*x)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(u, v)
    # a Hugging Face directory is accepted wherever a checkpoint file is
    fresh = _tiny(name)
    load_checkpoint(fresh, directory)
    _same_weights(model, fresh)


def test_segmentation_model_save_pretrained_round_trip(tmp_path):
    model = create_segmentation_model("vit_tiny_patch4_32", 4, "linear", embed_dim=32, depth=3, num_heads=2,
                                      patch_size=8).eval()
    model.save_pretrained(tmp_path)
    loaded = SegmentationModel.from_pretrained(tmp_path)
    _same_weights(model, loaded)
    x = _image_input(model)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(TypeError, match="not a CLIP"):
        vitlab.models.CLIP.from_pretrained(tmp_path)


def test_from_pretrained_downloads_a_hub_id_through_huggingface_hub(tmp_path, monkeypatch):
    """A repo id goes to hf_hub_download (mocked: no network), whose files are then loaded like a directory."""
    import huggingface_hub

    model = _tiny("vit_tiny_patch4_32").eval()
    model.save_pretrained(tmp_path / "cache")
    asked = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename, revision))
        return str(tmp_path / "cache" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = vitlab.from_pretrained("someone/tiny-vit", revision="v1")
    assert sorted(asked) == [("someone/tiny-vit", "config.json", "v1"), ("someone/tiny-vit", "model.safetensors", "v1")]
    _same_weights(model, loaded)
    with pytest.raises(FileNotFoundError):
        vitlab.from_pretrained(str(tmp_path / "missing"))


def test_push_to_hub_uploads_the_save_pretrained_files(tmp_path, monkeypatch):
    import huggingface_hub

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            return "https://example.invalid/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = _tiny("gpt_char_tiny").eval()
    assert model.push_to_hub("me/tiny-gpt", private=True, token="t") == "https://example.invalid/commit/1"
    assert uploaded["repo"] == ("me/tiny-gpt", True, True) and uploaded["token"] == "t"
    files = sorted(p.name for p in (tmp_path / "uploaded").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    _same_weights(model, vitlab.load(tmp_path / "uploaded"))


# -- older runs, names, safety ------------------------------------------------------------------------------------
def _strip_metadata(weights: Path) -> None:
    save_file(load_file(str(weights)), str(weights), metadata={"architecture": "vit_tiny_patch4_32"})


def test_old_run_without_metadata_falls_back_to_its_config_json(tmp_path):
    model = vitlab.create_model("vit_tiny_patch4_32", num_classes=10, in_chans=1, img_size=28, patch_size=7,
                                embed_dim=32, depth=2, num_heads=2).eval()
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "best" / "model.safetensors"))
    _strip_metadata(run / "best" / "model.safetensors")
    config = {"preset": "fashion_mnist_vit", "config": {"model": "vit_tiny_patch4_32", "dataset": "fashion_mnist",
                                                        "model_kwargs": {"patch_size": 7, "embed_dim": 32,
                                                                         "depth": 2, "num_heads": 2}}}
    (run / "config.json").write_text(json.dumps(config))
    spec = read_spec(run)
    assert spec["kwargs"]["img_size"] == 28 and spec["kwargs"]["in_chans"] == 1
    loaded = vitlab.load(run)
    x = _image_input(model)
    assert torch.equal(model(x), loaded(x))
    named = vitlab.create_model("vit_tiny_patch4_32", checkpoint_path=run / "best" / "model.safetensors")
    _same_weights(model, named)


def test_old_language_model_run_falls_back_to_shapes(tmp_path):
    model = vitlab.create_model("gpt_char_tiny", n_layer=1, n_head=2, n_embd=32, vocab_size=40, block_size=16).eval()
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    weights = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(run / "last" / "model.safetensors"))
    config = {"config": {"model": "gpt_char_tiny", "model_kwargs": {"n_layer": 1, "n_head": 2, "n_embd": 32}}}
    (run / "config.json").write_text(json.dumps(config))
    loaded = vitlab.load(run)
    assert loaded.vocab_size == 40 and loaded.block_size == 16
    _same_weights(model, loaded)


def test_weights_without_any_description_need_a_name(tmp_path):
    model = _tiny("vit_tiny_patch4_32")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="pass the model name"):
        vitlab.create_model(checkpoint_path=tmp_path / "w.safetensors")
    loaded = vitlab.create_model("vit_tiny_patch4_32", checkpoint_path=tmp_path / "w.safetensors",
                                 **TINY_FAMILIES["vit_tiny_patch4_32"])
    _same_weights(model, loaded)


def test_describe_architecture_lists_only_what_differs():
    assert describe_architecture("vit_tiny_patch4_32") == "vit_tiny_patch4_32"
    assert describe_architecture("vit_t4_32", dict(patch_size=7, embed_dim=96, depth=4, num_classes=10)) == (
        "vit_tiny_patch4_32(patch_size=7, embed_dim=96, depth=4)")
    assert describe_architecture("vit_tiny_patch4_32", dict(img_size=32, pos_embed="sincos")) == "vit_tiny_patch4_32"
    model = vitlab.create_model("vit_tiny_patch4_32", patch_size=7, img_size=28, embed_dim=96, depth=4, num_heads=3)
    assert model.pretrained_cfg["label"] == ("vit_tiny_patch4_32(patch_size=7, img_size=28, embed_dim=96, depth=4)")


def test_the_description_is_json_and_loading_runs_no_code(tmp_path):
    model = _tiny("vit_tiny_patch4_32")
    model.save_pretrained(tmp_path)
    spec = _spec_of(tmp_path / "model.safetensors")
    assert spec == {k: v for k, v in model_spec(model).items()}
    # a description that is not a spec is refused with a clear error, never evaluated
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={METADATA_KEY: "__import__('os').system('x')"})
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="not JSON"):
        vitlab.load(tmp_path)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={METADATA_KEY: json.dumps([1, 2])})
    with pytest.raises(ValueError, match="not a vitlab spec"):
        vitlab.load(tmp_path)


def test_a_model_with_unknown_kwargs_is_refused_by_save_pretrained(tmp_path):
    model = _tiny("vit_tiny_patch4_32")
    del model.vitlab_kwargs
    with pytest.raises(ValueError, match="not built by vitlab.create_model"):
        model.save_pretrained(tmp_path)
