"""vitlab.data.resolve_data_config / create_transform: the one inference preprocessing. Every call site that turns an
image into a model input (the loaders' eval decode, `vitlab attention` / `segment`, `vitlab zeroshot`, `vitlab segment
--head`, the emergent-segmentation scores) goes through it, on real photographs; where each field comes from
(override > run config > model > defaults); the one-line errors."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.data import (CROP_MODES, DataConfig, ImageDecodeError, ImageTransform, create_transform, load_dataset,
                         normalize_images, resolve_data_config)
from vitlab.data.augment import AugmentConfig, DeviceAugment
from vitlab.interpret import dense, render, segment, zeroshot
from vitlab.train import TrainConfig

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real photographs of several shapes and modes (RGB JPEG / PNG, grayscale PNG) and a 28 x 28 gray image."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    images = {"astronaut.jpg": skimage_data.astronaut(), "coffee.png": skimage_data.coffee(),
              "chelsea.jpg": skimage_data.chelsea(), "camera.png": skimage_data.camera(),
              "garment.png": rng.integers(0, 256, (28, 28), dtype=np.uint8)}
    for name, array in images.items():
        Image.fromarray(array).save(folder / name)
    return [folder / name for name in images]


@pytest.fixture
def calls(monkeypatch) -> list[DataConfig]:
    """The DataConfig of every ImageTransform call made while the test runs."""
    seen: list[DataConfig] = []
    original = ImageTransform.__call__

    def spy(self, image):
        seen.append(self.config)
        return original(self, image)

    monkeypatch.setattr(ImageTransform, "__call__", spy)
    return seen


def test_attention_inputs_are_create_transform_of_the_models_cfg(photos, calls):
    cfg = vitlab.create_model("vit_tiny_patch16_224").pretrained_cfg  # bicubic, crop_pct 0.9
    inputs = render.load_inputs([str(p) for p in photos], cfg)
    config = resolve_data_config(cfg)
    assert calls == [config] * len(photos) and (config.crop_pct, config.interpolation) == (0.9, "bicubic")
    transform = create_transform(config)
    for i, path in enumerate(photos):
        assert torch.equal(inputs.images[i], transform(path))
        assert torch.equal(inputs.display[i], create_transform(config, normalize=False)(path).permute(1, 2, 0))


def test_mask_files_are_cropped_by_create_transform(photos, tmp_path, calls):
    model = vitlab.create_model("vit_tiny_patch4_32", img_size=28, in_chans=1, patch_size=7, embed_dim=48, depth=1,
                                num_heads=3).eval()
    inputs = render.load_inputs([str(photos[-1])], model.pretrained_cfg)
    (tmp_path / "garment.png").write_bytes(photos[-1].read_bytes())  # the image is its own mask (nonzero pixels)
    render.evaluate_mask_files(model, inputs, tmp_path)
    assert calls[-1] == resolve_data_config(model, interpolation="nearest", in_chans=1, mean=(0.0,), std=(1.0,))


def test_zeroshot_images_are_create_transform_of_the_bundle(photos, calls):
    bundle = zeroshot.ClipBundle(None, None, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), 3, 64, [], "clip")
    images = zeroshot.load_clip_images(photos, bundle)
    config = resolve_data_config(input_size=(3, 64, 64), mean=bundle.mean, std=bundle.std, interpolation="bicubic",
                                 crop_pct=1.0, crop_mode="resize_crop")
    assert calls == [config] * len(photos) and bundle.data_config == config
    assert torch.equal(images, torch.stack([create_transform(config)(p) for p in photos]))


def test_segment_head_inputs_are_create_transform_short_side(photos, calls):
    meta = {"in_chans": 1, "image_size": 48, "mean": [0.29], "std": [0.35]}
    items = dense.load_segmentation_inputs([str(p) for p in photos], meta)
    config = resolve_data_config(input_size=(1, 48, 48), mean=(0.29,), std=(0.35,), interpolation="bilinear",
                                 crop_pct=1.0, crop_mode="short_side")
    assert calls == [config] * len(photos)
    for (name, image, truth, original), path in zip(items, photos):
        with Image.open(path) as source:
            assert original == (source.height, source.width) and min(image.shape[1:]) == 48
        assert torch.equal(image, create_transform(config, normalize=False)(path)) and truth is None


def test_the_loaders_eval_decode_is_create_transform_of_the_run_config(photos, tmp_path):
    """`vitlab eval` / `train` on an encoded dataset: decode_image's eval crop, then the device normalisation."""
    folder = tmp_path / "tree" / "val" / "things"
    folder.mkdir(parents=True)
    rgb = [p for p in photos if p.name != "camera.png"]
    for path in rgb:
        (folder / path.name).write_bytes(path.read_bytes())
    run = TrainConfig(dataset="imagefolder", model="vit_tiny_patch16_224", image_size=96, crop_pct=0.875)
    config = resolve_data_config(run_config=run)
    assert (config.crop_mode, config.interpolation, config.input_size, config.crop_pct) == \
           ("decode", "bilinear", (3, 96, 96), 0.875)
    data = load_dataset("imagefolder", "val", data_dir=tmp_path / "tree", image_size=96, crop_pct=0.875)
    augment = DeviceAugment(AugmentConfig(), mean=data.mean, std=data.std, num_classes=1)
    for i, (path, _) in enumerate(data.samples):
        pixels = data[i][0]  # (3, 96, 96) uint8, as the eval loader yields it
        assert torch.equal(pixels, create_transform(config, normalize=False)(path))
        assert torch.equal(augment.eval_transform(pixels[None])[0], create_transform(config)(path))
        with Image.open(path) as image:  # a Pillow image takes the same crop, decoded at full size
            full = create_transform(config, normalize=False)(image)
        assert full.shape == pixels.shape


def test_emergent_segmentation_scores_normalise_with_normalize_images(monkeypatch):
    seen = []
    real = segment.score_batch
    monkeypatch.setattr(segment, "score_batch", lambda model, x, *a, **k: seen.append(x) or real(model, x, *a, **k))
    model = vitlab.create_model("vit_tiny_patch4_32", img_size=28, in_chans=1, patch_size=7, embed_dim=48, depth=1,
                                num_heads=3)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    segment.evaluate_segmentation(model, images, images[:, 0] > 100, (0.29,), (0.35,), batch_size=3)
    assert torch.equal(torch.cat(seen), normalize_images(images, (0.29,), (0.35,)))
    assert torch.equal(normalize_images(images, (0.29,), (0.35,)), (images.float() / 255 - 0.29) / 0.35)


# ---------------------------------------------------------------------------------------------------------------
# where each field comes from
def test_precedence_override_then_run_config_then_model_then_defaults():
    assert resolve_data_config() == DataConfig() == DataConfig((3, 224, 224), "bicubic", 1.0, "center",
                                                              (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cfg = {"input_size": (3, 64, 64), "interpolation": "bilinear", "crop_pct": 0.9, "mean": (0.5,) * 3,
           "std": (0.25,) * 3, "num_classes": 10}
    model = vitlab.create_model("vit_tiny_patch4_32", img_size=64, patch_size=8, embed_dim=48, depth=1, num_heads=3)
    model.pretrained_cfg = cfg
    assert resolve_data_config(model) == resolve_data_config(cfg) == DataConfig((3, 64, 64), "bilinear", 0.9,
                                                                                 "center", (0.5,) * 3, (0.25,) * 3)
    in_memory = TrainConfig(dataset="fashion_mnist", model="vit_tiny_patch4_32")  # no image_size: the model's
    assert resolve_data_config(cfg | {"mean": (0.5,), "std": (0.25,), "input_size": (1, 28, 28)},
                               run_config=in_memory) == DataConfig((1, 28, 28), "bilinear", 0.9, "center",
                                                                   (0.286,), (0.353,))
    encoded = TrainConfig(dataset="imagenet", model="vit_tiny_patch4_32", image_size=160, crop_pct=0.95)
    assert resolve_data_config(cfg, run_config=encoded) == DataConfig((3, 160, 160), "bilinear", 0.95, "decode",
                                                                      (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert resolve_data_config(cfg, run_config=encoded, crop_pct=0.8, input_size=(3, 32, 32), mean=(0.1,) * 3,
                               crop_mode="center") == DataConfig((3, 32, 32), "bilinear", 0.8, "center", (0.1,) * 3,
                                                                 (0.229, 0.224, 0.225))
    assert resolve_data_config(cfg, in_chans=1, mean=(0.5,), std=(0.5,)).input_size == (1, 64, 64)
    assert resolve_data_config(cfg, crop_pct=None).crop_pct == 0.9  # None: not given
    assert set(CROP_MODES) == {"center", "decode", "resize_crop", "short_side"}


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_data_config(crop_pct=1.5),
     r"crop_pct must be a number in \(0, 1\], got 1.5 \(from the override\)"),
    (lambda: resolve_data_config({"crop_pct": 0}), r"got 0 \(from the model's pretrained_cfg\)"),
    (lambda: resolve_data_config(run_config=SimpleNamespace(dataset="imagenet", image_size=None, crop_pct=2.0)),
     r"got 2.0 \(from the run config\)"),  # any object with a TrainConfig's dataset, image_size and crop_pct
    (lambda: resolve_data_config({"mean": (0.5, 0.5, 0.5), "std": (0.5,) * 3}, in_chans=1),
     r"mean has 3 values, the model takes 1 input channels \(input_size \(1, 224, 224\)\) \(from the model's "),
    (lambda: resolve_data_config(interpolation="lanczos"), r"interpolation must be one of bilinear, bicubic, nearest"),
    (lambda: resolve_data_config(crop_mode="squash"), r"crop_mode must be one of center, decode, resize_crop"),
    (lambda: resolve_data_config(crop_mode="decode"), r"crop_mode 'decode' .* needs in_chans 3 and interpolation "
                                                      r"'bilinear', got 3 and 'bicubic' \(from the override\)"),
    (lambda: resolve_data_config(input_size=(3, 0, 0)), r"input_size must be three positive ints"),
    (lambda: resolve_data_config(std=(1, 0, 1)), r"std must be positive, got \(1.0, 0.0, 1.0\)"),
    (lambda: resolve_data_config(img_size=32), r"unknown field\(s\) img_size; valid: input_size, interpolation"),
    (lambda: resolve_data_config(run_config=TrainConfig(dataset="ade20k", model="m")),
     r"'ade20k' is a segmentation dataset: its mean / std are in the run's segmentation.json; pass mean= and std="),
    (lambda: create_transform(resolve_data_config(input_size=(4, 8, 8), mean=(0,) * 4, std=(1,) * 4)),
     r"cannot prepare images for a model with 4 input channels \(expected 1 or 3\)"),
    (lambda: create_transform(resolve_data_config(input_size=(3, 8, 16))), r"prepares square inputs"),
    (lambda: create_transform(resolve_data_config())(np.zeros((4, 4, 5), np.uint8)),
     r"image: a uint8 image of shape \(4, 4, 5\) cannot be converted to the model's channels"),
    (lambda: create_transform(resolve_data_config())(np.zeros((4, 4), np.float32)), r"a float32 image of shape"),
])
def test_bad_values_are_one_line_errors_saying_where_they_came_from(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", CROP_MODES)
def test_a_file_that_is_not_an_image_is_named(tmp_path, mode):
    bad, cut = tmp_path / "notes.png", tmp_path / "cut.png"
    bad.write_text("not an image")
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:60])  # header intact, pixel data truncated
    extra = {"interpolation": "bilinear"} if mode == "decode" else {}
    transform = create_transform(resolve_data_config(input_size=(3, 16, 16), crop_mode=mode, **extra))
    for path in (bad, cut):
        with pytest.raises(ImageDecodeError, match=rf"{path.name}: ") as err:
            transform(path)
        assert "\n" not in str(err.value)
