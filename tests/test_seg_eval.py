"""vitlab.train.tasks.seg_eval: the confusion matrix and mmsegmentation's metrics on a hand-computed example, and
whole / sliding-window inference (mmseg's window rule, overlap averaging, inputs smaller than the crop)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.train.distributed import DistInfo
from vitlab.train.tasks.seg_eval import (ConfusionMatrix, confusion_matrix, predict_logits, segmentation_metrics,
                                   slide_inference, whole_inference, window_starts)

# A 3x3 label map with 4 classes. Class 2 is only predicted (IoU 0, accuracy undefined); class 3 is predicted only
# under ignored pixels, so it is absent from both after masking (IoU and accuracy NaN, left out of the means).
TARGET = torch.tensor([[[0, 0, 0], [0, 1, 1], [1, 255, 255]]])
PRED = torch.tensor([[[0, 0, 0], [1, 1, 1], [2, 2, 3]]])
# kept pixels (true, pred): (0,0) x3, (0,1), (1,1) x2, (1,2)
MATRIX = torch.tensor([[3, 1, 0, 0],
                       [0, 2, 1, 0],
                       [0, 0, 0, 0],
                       [0, 0, 0, 0]])
# intersect [3, 2, 0, 0]; ground truth [4, 3, 0, 0]; predicted [3, 3, 1, 0]; union [4, 4, 1, 0]
IOU = [75.0, 50.0, 0.0, math.nan]  # 3/4, 2/4, 0/1, 0/0
ACC = [75.0, 200 / 3, math.nan, math.nan]  # 3/4, 2/3, 0/0, 0/0
MIOU = (75.0 + 50.0 + 0.0) / 3  # 41.667: class 3 left out, class 2 counts as 0
MACC = (75.0 + 200 / 3) / 2  # 70.833: classes 2 and 3 left out
AACC = 100 * 5 / 7  # 71.429: 5 of the 7 kept pixels right


def test_confusion_matrix_by_hand():
    matrix = confusion_matrix(PRED, TARGET, num_classes=4, ignore_index=255)
    assert matrix.dtype == torch.int64
    assert torch.equal(matrix, MATRIX)


def test_confusion_matrix_refuses_out_of_range_labels_and_shape_mismatch():
    with pytest.raises(ValueError, match=r"0\.\.3.*found values 0\.\.4"):
        confusion_matrix(torch.tensor([0, 4]), torch.tensor([0, 1]), num_classes=4)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), num_classes=4)
    # an out-of-range prediction under an ignored target does not count and does not raise
    assert confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, 255]), num_classes=2).sum() == 1


def _assert_close_nan(values, expected):
    assert len(values) == len(expected)
    for value, want in zip(values, expected):
        assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want), (values, expected)


def test_metrics_by_hand_absent_class_excluded_predicted_only_class_zero():
    metrics = segmentation_metrics(MATRIX, class_names=["bg", "shirt", "bag", "boot"])
    assert metrics["miou"] == pytest.approx(MIOU)
    assert metrics["macc"] == pytest.approx(MACC)
    assert metrics["aacc"] == pytest.approx(AACC)
    _assert_close_nan(metrics["iou"], IOU)
    _assert_close_nan(metrics["acc"], ACC)
    assert metrics["iou_shirt"] == pytest.approx(50.0) and metrics["iou_bag"] == 0.0
    assert math.isnan(metrics["iou_boot"])


def test_metrics_of_an_empty_matrix_are_nan_and_names_must_match():
    metrics = segmentation_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(metrics["miou"]) and math.isnan(metrics["macc"]) and math.isnan(metrics["aacc"])
    with pytest.raises(ValueError, match="2 class names for a 4-class matrix"):
        segmentation_metrics(MATRIX, class_names=["a", "b"])


def test_accumulator_sums_batches_takes_logits_and_all_reduce_is_identity_without_distributed():
    accumulator = ConfusionMatrix(num_classes=4)
    logits = F.one_hot(PRED, 4).permute(0, 3, 1, 2).float()  # (1, 4, 3, 3) whose argmax is PRED
    accumulator.update(logits, TARGET)
    accumulator.update(PRED, TARGET)
    assert torch.equal(accumulator.matrix, 2 * MATRIX)
    before = accumulator.matrix.clone()
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert not info.enabled
    assert accumulator.all_reduce(info) is accumulator
    assert torch.equal(accumulator.matrix, before)
    assert accumulator.compute()["miou"] == pytest.approx(MIOU)
    accumulator.reset()
    assert accumulator.matrix.sum() == 0


# ---------------------------------------------------------------- inference
def _conv_net(in_chans: int = 3, num_classes: int = 5) -> nn.Module:
    """Position-dependent near the border (zero padding): sliding windows change its output."""
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1))


def _mmseg_slide_reference(model, images, num_classes, crop, stride):
    """mmsegmentation's EncoderDecoder.slide_inference loop, transcribed (square crop and stride)."""
    batch, _, h_img, w_img = images.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = images.new_zeros((batch, num_classes, h_img, w_img))
    count = images.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits = model(images[:, :, y1:y2, x1:x2])
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def test_slide_equals_whole_on_an_input_of_exactly_one_window():
    model, images = _conv_net(), torch.randn(2, 3, 12, 12)
    assert torch.equal(slide_inference(model, images, 5, crop_size=12, stride=8), whole_inference(model, images))


@torch.no_grad()
def test_slide_matches_mmseg_loop_with_overlap_and_differs_from_whole_for_a_padded_conv():
    model, images = _conv_net(), torch.randn(2, 3, 20, 13)
    slide = slide_inference(model, images, 5, crop_size=8, stride=5, batch_windows=3)  # 4 x 2 windows
    torch.testing.assert_close(slide, _mmseg_slide_reference(model, images, 5, 8, 5), atol=1e-5, rtol=0)
    assert not torch.allclose(slide, whole_inference(model, images), atol=1e-3)  # the windows did matter


@torch.no_grad()
def test_slide_equals_whole_for_a_position_independent_model_with_overlapping_windows():
    model, images = nn.Conv2d(3, 4, kernel_size=1), torch.randn(3, 3, 23, 17)
    for batch_windows in (1, 5, 16):
        slide = slide_inference(model, images, 4, crop_size=(8, 6), stride=(5, 4), batch_windows=batch_windows)
        torch.testing.assert_close(slide, whole_inference(model, images), atol=1e-5, rtol=0)


def test_window_starts_follow_mmseg_and_cover_every_pixel():
    assert window_starts(20, 8, 5) == [0, 5, 10, 12]  # grids = (20 - 8 + 4) // 5 + 1 = 4, the last clamped
    assert window_starts(13, 8, 5) == [0, 5]
    assert window_starts(8, 8, 3) == [0]
    assert window_starts(5, 8, 4) == [0]  # smaller than the crop: one (padded) window
    for size in range(1, 40):
        for crop in (1, 4, 7, 16):
            for stride in range(1, crop + 1):
                starts = window_starts(size, crop, stride)
                covered = {p for s in starts for p in range(s, min(s + crop, size))}
                assert covered == set(range(size)), (size, crop, stride)
                assert all(0 <= s <= max(size - crop, 0) for s in starts)


class _CropOnly(nn.Module):
    """Accepts only crop-sized inputs (like a ViT with a fixed position grid); counts the windows it sees; its
    logits are the input's first channel repeated, so every window contributes the pixels it covers."""

    def __init__(self, crop: int, num_classes: int):
        super().__init__()
        self.crop, self.num_classes, self.windows = crop, num_classes, 0

    def forward(self, x):
        assert x.shape[-2:] == (self.crop, self.crop), x.shape
        self.windows += x.shape[0]
        return x[:, :1].expand(-1, self.num_classes, -1, -1).clone()


@torch.no_grad()
def test_every_pixel_is_covered_and_windows_are_counted():
    model, images = _CropOnly(8, 3), torch.randn(2, 1, 20, 13)
    logits = slide_inference(model, images, 3, crop_size=8, stride=5)
    assert model.windows == 2 * 4 * 2  # B x h_grids x w_grids
    torch.testing.assert_close(logits, images.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)  # averaged, no NaN


@torch.no_grad()
def test_input_smaller_than_the_crop_is_padded_for_the_model_and_cropped_back():
    for height, width in ((5, 6), (1, 1), (5, 20)):
        images = torch.randn(2, 1, height, width)
        logits = slide_inference(_CropOnly(8, 2), images, 2, crop_size=8, stride=4)
        assert logits.shape == (2, 2, height, width)
        torch.testing.assert_close(logits, images.expand(-1, 2, -1, -1), atol=1e-6, rtol=0)
    conv = nn.Conv2d(1, 2, 1)
    images = torch.randn(1, 1, 5, 6)
    torch.testing.assert_close(slide_inference(conv, images, 2, 8, 4), conv(images), atol=1e-6, rtol=0)


def test_predict_logits_resizes_bilinearly_and_checks_its_arguments():
    model, images = nn.Conv2d(3, 4, 1), torch.randn(2, 3, 16, 16)
    out = predict_logits(model, images, "whole", out_size=(24, 20))
    expected = F.interpolate(model(images), size=(24, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)
    assert not out.requires_grad
    slide = predict_logits(model, images, "slide", num_classes=4, crop_size=8, stride=6)
    torch.testing.assert_close(slide, model(images), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs num_classes, crop_size and stride"):
        predict_logits(model, images, "slide", num_classes=4)
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        predict_logits(model, images, "tiles")
    with pytest.raises(ValueError, match="expected num_classes=5"):
        predict_logits(model, images, "whole", num_classes=5)
    with pytest.raises(ValueError, match="at the input resolution"):
        whole_inference(nn.Conv2d(3, 4, 2, stride=2), images)
