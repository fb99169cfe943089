"""Zero-shot classification weights and retrieval recall, against hand computations."""
import pytest
import torch
import torch.nn.functional as F

from vitlab.train.tasks.zeroshot import retrieval_recall, zero_shot_classifier, zero_shot_logits


class Lookup(torch.nn.Module):
    """encode_text: a fixed vector per prompt (first token id); encode_image: the image itself (B, D)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def encode_text(self, ids):
        return self.table[ids[:, 0]]

    def encode_image(self, images):
        return images


def test_classifier_averages_normalised_prompts_per_class():
    prompts = {"a cat": 0, "a photo of a cat": 1, "a dog": 2, "a photo of a dog": 3}
    table = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 3.0], [0, 0, 1.0]])
    tokenizer = lambda texts: torch.tensor([[prompts[t]] for t in texts])
    W = zero_shot_classifier(Lookup(table), ["cat", "dog"], ["a {}", "a photo of a {c}"], tokenizer)
    expected_cat = F.normalize(torch.tensor([1.0, 1.0, 0]) / 2, dim=0)  # mean of two unit vectors, renormalised
    torch.testing.assert_close(W[:, 0], expected_cat)
    torch.testing.assert_close(W[:, 1], torch.tensor([0, 0, 1.0]))
    logits = zero_shot_logits(Lookup(table), torch.tensor([[0.0, 0, 5], [1.0, 1, 0]]), W)
    assert logits.argmax(1).tolist() == [1, 0] and logits[0, 1].item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no {}"):
        zero_shot_classifier(Lookup(table), ["cat"], ["a photo"], tokenizer)


def test_retrieval_recall_by_hand():
    images = torch.eye(3)  # image i is the unit vector e_i
    # captions 0,1 → image 0; 2,3 → image 1; 4,5 → image 2. Caption 2 points mostly at image 2 (cosine 0.98) and a
    # little at its own image 1 (0.20): a miss at k=1, a hit at k=2.
    texts = torch.tensor([[1.0, 0, 0], [1, 0.1, 0], [0, 0.2, 1], [0, 1, 0], [0, 0, 1], [0.1, 0, 1]])
    r = retrieval_recall(images, texts, ks=(1, 2), texts_per_image=2)
    assert r["image_to_text_r1"] == pytest.approx(100.0)  # each image's best caption is one of its own
    assert r["text_to_image_r1"] == pytest.approx(100 * 5 / 6)  # caption 2 ranks image 2 first
    assert r["text_to_image_r2"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="expected 2 per image"):
        retrieval_recall(images, texts[:5], texts_per_image=2)
