"""vitlab.data.decode: crop boxes with torchvision's semantics, outputs pinned against timm's own transforms on real
photographs (scikit-image, scikit-learn), DCT-scaled decoding against full decoding, every image mode, every error,
and the Pillow fallback."""
import io
import math
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import vitlab.data.decode as decode
from vitlab.data.decode import (DecodeCrop, ImageDecodeError, center_crop_box, decode_image,
                                random_resized_crop_box)

skimage_data = pytest.importorskip("skimage.data")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


# ---------------------------------------------------------------------------------------------------------------
# real photographs
@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 photographs: 300 x 451 up to 1411 x 1411."""
    china, flower = sklearn_datasets.load_sample_images().images
    return {"astronaut": skimage_data.astronaut(), "chelsea": skimage_data.chelsea(),
            "coffee": skimage_data.coffee(), "rocket": skimage_data.rocket(), "china": china, "flower": flower,
            "hubble": skimage_data.hubble_deep_field(), "retina": skimage_data.retina()}


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **options) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def timm_data():
    from torchvision_shim import import_torchvision

    import_torchvision()
    return pytest.importorskip("timm.data")


@pytest.fixture
def recorded_plans(monkeypatch) -> list:
    """The decode plans (original size, crop box, DCT reduction) of the decode_image calls that follow."""
    plans, crop_resize = [], decode._crop_resize

    def spy(pixels, plan, crop):
        plans.append(plan)
        return crop_resize(pixels, plan, crop)

    monkeypatch.setattr(decode, "_crop_resize", spy)
    return plans


# ---------------------------------------------------------------------------------------------------------------
# crop boxes
def test_random_resized_crop_box_ranges_over_many_draws():
    rng, scale, ratio = random.Random(0), (0.08, 1.0), (3 / 4, 4 / 3)
    areas, ratios = [], []
    for _ in range(3000):
        left, top, right, bottom = random_resized_crop_box(640, 480, scale, ratio, rng)
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480
        w, h = right - left, bottom - top
        areas.append(w * h / (640 * 480))
        ratios.append(w / h)
    # rounding w and h to pixels moves the area and ratio by a fraction of a pixel over the crop's side
    assert 0.08 - 0.01 <= min(areas) < 0.1 and 0.9 < max(areas) <= 1.0
    assert 3 / 4 - 0.05 <= min(ratios) < 0.8 and 1.25 < max(ratios) <= 4 / 3 + 0.05


def test_random_resized_crop_box_distributions_when_every_draw_fits():
    """On a square with areas <= 1/2 every first draw fits: area fraction uniform, log aspect ratio uniform,
    position uniform."""
    rng, scale, ratio = random.Random(1), (0.08, 0.5), (3 / 4, 4 / 3)
    boxes = np.array([random_resized_crop_box(1000, 1000, scale, ratio, rng) for _ in range(4000)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area, log_ratio = w * h / 1e6, np.log(w / h)
    assert abs(area.mean() - 0.29) < 0.01 and abs(np.quantile(area, 0.25) - 0.185) < 0.015
    assert abs(log_ratio.mean()) < 0.01 and abs(log_ratio.std() - math.log(16 / 9) / math.sqrt(12)) < 0.01
    slack = (1000 - w) / 2  # a uniform left edge in [0, 1000 - w] is centred on average
    assert abs(np.mean(boxes[:, 0] - slack)) < 5 and abs(np.mean(boxes[:, 1] - (1000 - h) / 2)) < 5


def test_random_resized_crop_box_fallbacks_for_extreme_aspect_ratios():
    rng, ratio = random.Random(0), (3 / 4, 4 / 3)
    # no draw of >= 90 % of the area fits a 1000 x 10 strip: the widest centred crop with ratio 4/3
    assert random_resized_crop_box(1000, 10, (0.9, 1.0), ratio, rng) == (493, 0, 506, 10)
    assert random_resized_crop_box(10, 1000, (0.9, 1.0), ratio, rng) == (0, 493, 10, 506)  # ratio 3/4
    for seed in range(20):  # a square with scale (1, 1): a draw fits only with aspect ~1, the fallback is the whole
        assert random_resized_crop_box(100, 100, (1.0, 1.0), ratio, random.Random(seed)) == (0, 0, 100, 100)
    with pytest.raises(ValueError, match="positive"):
        random_resized_crop_box(0, 10, (0.08, 1.0), ratio, rng)


def test_random_resized_crop_box_is_timms_get_params(timm_data):
    """Equal states of our rng and of timm's global `random` draw the same crop."""
    from timm.data.transforms import RandomResizedCropAndInterpolation

    for seed, (w, h) in enumerate([(500, 375), (375, 500), (1024, 768), (64, 48), (1000, 10)]):
        for scale, ratio in [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 0.9), (0.5, 2.0))]:
            random.seed(seed)
            i, j, ch, cw = RandomResizedCropAndInterpolation.get_params(Image.new("RGB", (w, h)), scale, ratio)
            assert random_resized_crop_box(w, h, scale, ratio, random.Random(seed)) == (j, i, j + cw, i + ch)


def test_center_crop_box():
    assert center_crop_box(400, 200, 224, 0.875) == (112.5, 12.5, 287.5, 187.5)  # short side 200 -> 256, keep 224
    assert center_crop_box(224, 300, 224, 1.0) == (0.0, 38.0, 224.0, 262.0)


def test_decode_crop_validates_its_fields():
    assert DecodeCrop(224, crop_pct=0.875).resize_size == 256
    assert DecodeCrop(scale=[0.5, 1]).scale == (0.5, 1.0)  # stored as a float tuple (hashable, frozen)
    for bad in (dict(size=0), dict(size=True), dict(scale=(0.5, 0.1)), dict(scale=(0, 1)), dict(ratio=(1.0,)),
                dict(crop_pct=0.0), dict(crop_pct=1.5)):
        with pytest.raises(ValueError, match="DecodeCrop"):
            DecodeCrop(**bad)


# ---------------------------------------------------------------------------------------------------------------
# outputs against timm's transforms
def test_eval_decode_equals_timms_eval_transform(photos, timm_data, recorded_plans):
    """Resize 256 + centre crop 224 (timm's eval transform, PIL bilinear) on the fully decoded photo, against
    decode_image, which decodes images with a short side >= 514 at 1/2 or 1/4 scale."""
    transform = timm_data.create_transform(224, is_training=False, normalize=False)  # uint8 (3, 224, 224)
    for name, photo in photos.items():
        data = encode(photo, quality=90)
        out = decode_image(data, DecodeCrop(224))
        expected = transform(Image.open(io.BytesIO(data)).convert("RGB")).numpy().transpose(1, 2, 0)
        diff = np.abs(out.astype(int) - expected)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        if recorded_plans[-1].reduction == 1:  # same pixels, same resize up to the fixed-point rounding (±1)
            assert diff.max() <= 1 and diff.mean() < 0.02, name
        else:
            assert diff.mean() < 1.0 and psnr(out, expected) > 40, name
    assert {p.reduction for p in recorded_plans} == {1, 2, 4}  # hubble 1/2, retina 1/4, the others 1


def test_train_decode_equals_timms_train_crop(photos, timm_data, recorded_plans):
    """With equal seeds, timm's RandomResizedCropAndInterpolation and decode_image pick the same crop; for photos
    too small for scaled decoding the outputs agree to the resize's rounding."""
    transform = timm_data.create_transform(224, is_training=True, color_jitter=None, hflip=0.0, normalize=False)
    for name in ("chelsea", "coffee", "rocket", "china"):
        data = encode(photos[name], quality=90)
        image = Image.open(io.BytesIO(data)).convert("RGB")
        for seed in range(5):
            random.seed(seed)
            expected = transform(image).numpy().transpose(1, 2, 0)  # (224, 224, 3)
            out = decode_image(data, DecodeCrop(224, train=True), random.Random(seed))
            diff = np.abs(out.astype(int) - expected)
            assert diff.max() <= 2 and diff.mean() < 0.5, (name, seed)
    assert {p.reduction for p in recorded_plans} == {1}


def test_scaled_decoding_is_close_to_full_decoding(photos, recorded_plans):
    """A 1/2 or 1/4 DCT-scaled decode of a large crop, then the resize, against the full decode → the same crop
    (snapped to the scaled grid) → Pillow's bilinear resize."""
    reductions = set()
    for name in ("hubble", "retina"):
        data = encode(photos[name], quality=90)
        full = pillow_rgb(data)
        for seed in range(8):
            out = decode_image(data, DecodeCrop(224, train=True), random.Random(seed))
            plan = recorded_plans[-1]
            k = plan.reduction
            box = tuple(k * round(edge / k) for edge in plan.box)
            assert min(box[2] - box[0], box[3] - box[1]) / k >= 224  # never upsamples what a full decode shrinks
            expected = np.asarray(Image.fromarray(full).crop(box).resize((224, 224), Image.Resampling.BILINEAR))
            assert psnr(out, expected) > 35, (name, seed, k)
            reductions.add(k)
    assert reductions >= {2, 4}


def test_equal_rng_states_give_identical_output(photos):
    data = encode(photos["astronaut"], quality=85)
    crop = DecodeCrop(160, train=True)
    first = decode_image(data, crop, random.Random(7))
    assert np.array_equal(first, decode_image(data, crop, random.Random(7)))
    assert not np.array_equal(first, decode_image(data, crop, random.Random(8)))
    rng = random.Random(3)
    rng.random()
    state = rng.getstate()
    again = random.Random()
    again.setstate(state)
    assert np.array_equal(decode_image(data, crop, rng), decode_image(data, crop, again))
    with pytest.raises(ValueError, match="rng"):
        decode_image(data, crop)


def test_bytes_bytearray_memoryview_and_paths_decode_alike(photos, tmp_path):
    data = encode(photos["coffee"], quality=80)
    (tmp_path / "x.jpg").write_bytes(data)
    crop = DecodeCrop(96)
    expected = decode_image(data, crop)
    for source in (bytearray(data), memoryview(data), str(tmp_path / "x.jpg"), tmp_path / "x.jpg"):
        assert np.array_equal(decode_image(source, crop), expected)
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "missing.jpg", crop)
    with pytest.raises(TypeError):
        decode_image(12, crop)


# ---------------------------------------------------------------------------------------------------------------
# image modes and formats
def png_16bit_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), which Pillow reads but cannot write."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)  # filter 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_every_mode_and_format_becomes_rgb_uint8(photos):
    photo = np.asarray(Image.fromarray(photos["chelsea"]).resize((96, 64)))  # (64, 96, 3)
    rgb = Image.fromarray(photo)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    sources = {
        "jpeg": encode(rgb, quality=90), "progressive jpeg": encode(rgb, quality=90, progressive=True),
        "gray jpeg": encode(rgb.convert("L")), "cmyk jpeg": encode(rgb.convert("CMYK")),
        "png": encode(rgb, "PNG"), "gray png": encode(rgb.convert("L"), "PNG"),
        "1-bit png": encode(rgb.convert("1"), "PNG"),
        "palette png": encode(rgb.convert("P"), "PNG"), "rgba png": encode(Image.fromarray(rgba), "PNG"),
        "la png": encode(rgb.convert("LA"), "PNG"), "webp": encode(rgb, "WEBP", lossless=True),
        "gif": encode(rgb, "GIF"), "bmp": encode(rgb, "BMP"), "tiff": encode(rgb, "TIFF"),
        "cmyk tiff": encode(rgb.convert("CMYK"), "TIFF"),
    }
    crop = DecodeCrop(48)
    for name, data in sources.items():
        out = decode_image(data, crop)
        assert out.shape == (48, 48, 3) and out.dtype == np.uint8 and out.flags.c_contiguous, name
        with Image.open(io.BytesIO(data)) as img:  # Pillow's convert("RGB"), resized by timm's eval rule
            expected = decode._crop_resize(np.array(img.convert("RGB")), decode._plan(*img.size, crop, None,
                                                                                        False), crop)
        assert np.abs(out.astype(int) - expected).max() <= 1, name
    # alpha is dropped, not blended; the lossless sources keep the photo's colours
    assert np.array_equal(decode_image(sources["rgba png"], crop), decode_image(sources["png"], crop))
    gray = decode_image(sources["gray png"], crop)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_16_bit_pngs_keep_their_high_byte(photos):
    photo = np.asarray(Image.fromarray(photos["coffee"]).resize((48, 32)))  # (32, 48, 3)
    wide = photo.astype(np.uint16) * 257  # 8-bit v -> 16-bit v * 257, whose high byte is v
    crop = DecodeCrop(32, crop_pct=1.0)
    expected = decode_image(encode(photo, "PNG"), crop)
    assert np.array_equal(decode_image(png_16bit_rgb(wide), crop), expected)
    gray16 = encode(Image.fromarray(wide[..., 0]), "PNG")  # Pillow mode I;16 (convert("RGB") would give white)
    with Image.open(io.BytesIO(gray16)) as img:
        assert img.mode.startswith("I;16")
    out = decode_image(gray16, crop)
    assert np.array_equal(out[..., 1], decode_image(encode(photo[..., 0], "PNG"), crop)[..., 0])


# ---------------------------------------------------------------------------------------------------------------
# errors
def test_undecodable_data_raises_image_decode_error(photos):
    data = encode(photos["astronaut"], quality=90)
    png = encode(photos["astronaut"], "PNG")
    crop = DecodeCrop(64)
    cases = {"truncated jpeg": data[: len(data) // 2], "jpeg without its end": data[:-200],
             "truncated png": png[: len(png) // 2], "random bytes": np.random.default_rng(0).bytes(5000),
             "jpeg magic then garbage": b"\xff\xd8\xff" + bytes(200), "empty": b""}
    sof = data.find(b"\xff\xc0")  # SOF0: ff c0, length (2), precision (1), height (2), width (2)
    cases["zero-height jpeg"] = data[:sof + 5] + b"\x00\x00" + data[sof + 7:]
    for name, bad in cases.items():
        with pytest.raises(ImageDecodeError) as info:
            decode_image(bad, crop)
        assert "BytesIO" not in str(info.value), name
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", crop)
    with pytest.raises(ImageDecodeError, match="truncated|Premature|cannot decode"):
        decode_image(data[: len(data) // 2], DecodeCrop(64, train=True), random.Random(0))


@pytest.mark.parametrize("with_simplejpeg", [True, False])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused(photos, monkeypatch, with_simplejpeg):
    if not with_simplejpeg:
        monkeypatch.setattr(decode, "simplejpeg", None)
    small = np.asarray(Image.fromarray(photos["rocket"]).resize((80, 60)))  # 4800 pixels
    for data in (encode(small, quality=90), encode(small, "PNG")):
        for limit in (3000, 2000):  # Pillow warns above the limit (we refuse) and raises above twice the limit
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
            with pytest.raises(ImageDecodeError, match="MAX_IMAGE_PIXELS|decompression bomb"):
                decode_image(data, DecodeCrop(32))
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4800)
        assert decode_image(data, DecodeCrop(32)).shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------------------------
# which decoder runs, and the Pillow fallback
@pytest.fixture
def decoder_calls(monkeypatch) -> dict[str, int]:
    calls = {"simplejpeg": 0, "pillow": 0}
    for name, attribute in (("simplejpeg", "_decode_simplejpeg"), ("pillow", "_decode_pillow")):
        function = getattr(decode, attribute)

        def counted(*args, _function=function, _name=name):
            calls[_name] += 1
            return _function(*args)

        monkeypatch.setattr(decode, attribute, counted)
    return calls


def test_simplejpeg_decodes_plain_jpegs_and_pillow_the_rest(photos, decoder_calls):
    pytest.importorskip("simplejpeg")
    photo = photos["rocket"]
    crop = DecodeCrop(64)
    decode_image(encode(photo, quality=90), crop)
    decode_image(encode(photo, quality=90, progressive=True), crop)
    decode_image(encode(Image.fromarray(photo).convert("L")), crop)
    assert decoder_calls == {"simplejpeg": 3, "pillow": 0}
    decode_image(encode(Image.fromarray(photo).convert("CMYK")), crop)  # Pillow's CMYK conversion is the reference
    decode_image(encode(photo, "PNG"), crop)
    assert decoder_calls == {"simplejpeg": 3, "pillow": 2}
    # libjpeg's "corrupt data" warning: simplejpeg (strict) refuses the header, Pillow decodes the same pixels
    data = encode(photo, quality=90)
    scan = data.find(b"\xff\xda")
    warned = data[:scan] + b"\x00\x01\x02" + data[scan:]  # extraneous bytes before the start-of-scan marker
    crop = DecodeCrop(224, train=True)
    out = decode_image(warned, crop, random.Random(4))
    assert decoder_calls == {"simplejpeg": 3, "pillow": 3}
    assert np.array_equal(out, decode_image(data, crop, random.Random(4)))


def test_a_jpeg_simplejpeg_refuses_gets_the_same_crop_from_pillow(photos, monkeypatch, recorded_plans):
    simplejpeg = pytest.importorskip("simplejpeg")
    data = encode(photos["retina"], quality=90)
    crop = DecodeCrop(224, train=True)
    expected = decode_image(data, crop, random.Random(11))

    def refuse(*args, **kwargs):
        raise ValueError("refused")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    out = decode_image(data, crop, random.Random(11))  # the crop drawn before simplejpeg failed is kept
    assert recorded_plans[0] == recorded_plans[1] and recorded_plans[0].reduction > 1
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("train", [False, True])
def test_pillow_fallback_gives_the_same_pixels(photos, monkeypatch, decoder_calls, recorded_plans, train):
    """Without simplejpeg, Pillow (with Image.draft for the same DCT scale) gives the same image: both decoders run
    libjpeg-turbo with the same settings."""
    pytest.importorskip("simplejpeg")
    sources = [encode(photos[name], quality=q) for name, q in (("hubble", 90), ("retina", 75), ("coffee", 95))]
    crop = DecodeCrop(224, train=train)
    fast = [decode_image(data, crop, random.Random(seed)) for seed, data in enumerate(sources)]
    monkeypatch.setattr(decode, "simplejpeg", None)
    slow = [decode_image(data, crop, random.Random(seed)) for seed, data in enumerate(sources)]
    assert decoder_calls == {"simplejpeg": 3, "pillow": 3}
    assert recorded_plans[:3] == recorded_plans[3:] and {p.reduction for p in recorded_plans} != {1}
    for a, b in zip(fast, slow):
        assert a.shape == b.shape == (224, 224, 3)
        assert np.abs(a.astype(int) - b).max() <= 1


def test_pillow_decodes_at_full_size_when_draft_declines(photos, monkeypatch, recorded_plans):
    from PIL import JpegImagePlugin

    data = encode(photos["retina"], quality=90)
    crop = DecodeCrop(224, train=True)
    scaled = decode_image(data, crop, random.Random(2))
    monkeypatch.setattr(decode, "simplejpeg", None)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: None)
    full = decode_image(data, crop, random.Random(2))
    assert recorded_plans[0].reduction > 1 and recorded_plans[1] == recorded_plans[0]._replace(reduction=1)
    assert psnr(full, scaled) > 35
