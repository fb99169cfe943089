"""Contrastive image–text training (CLIP, CLIPA) for the engine: `ClipTask` implements `vitlab.train.tasks.Task`.

Datasets (`is_clip_dataset`):
  `image_text:ROOT`            captioned images, a caption table or webdataset shards per split
                               (`vitlab.data.load_image_text_dataset`), decoded in loader workers; the workers also
                               tokenize (one owner: the dataset's tokenizer)
  `fashion_mnist_captions`     Fashion-MNIST held in memory, captioned on the device: each training image gets
                               `template.format(class name)` with a template drawn at random per step from the
                               training templates (all but the last `heldout_templates` of the templates file);
                               captions are tokenized once into a (classes, templates, L) table

Loss: symmetric InfoNCE over the global batch (`ClipLoss`, open_clip's semantics), logit scale clamped at 100.
Evaluation, summed over ranks:
  image–caption pairs     `eval_loss` (the contrastive loss per evaluation batch, averaged) and retrieval
                          recall@1/5/10 both ways over the whole split (`recall_mean`: their mean)
  zero-shot               top-1 / top-5 (%) of a labelled split classified by class names × templates
                          (`fashion_mnist_captions`: its test split with the held-out templates; `image_text`:
                          `zeroshot_dataset` with `templates`, class names from the dataset or `class_names`)
`best/` keeps the highest zero-shot top-1 when there is a zero-shot task, else the lowest evaluation loss.

Tokenizers (`tokenizer`): 'clip' (OpenAI CLIP BPE) and 'bert' (CLIPA's WordPiece) read local vocabulary files
(`tokenizer_path` or the places `vitlab.text.tokenizer_search_places` lists); 'bpe:N' is a byte-level BPE trained
on the training captions and saved in the run (`RUN/tokenizer/`), wrapped in CLIP's format (`CaptionTokenizer`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...data import load_dataset
from ...data.image_text import CLASS_CAPTIONED_DATASETS, is_image_text_dataset, load_image_text_dataset
from ...data.loader import DeviceLoader, EncodedLoader
from ...data.templates import DEFAULT_TEMPLATES_FILE, class_names_from_file, read_templates
from ...text import BPETokenizer, CaptionTokenizer, load_text_tokenizer, load_tokenizer, parse_tokenizer_spec
from ..checkpoint import write_text_atomic
from .clip_loss import ClipLoss
from ..config import TrainConfig
from .classification import config_plan
from ..distributed import DistInfo, all_reduce_sum
from ._contract import check_model_family, per_rank_batch
from .segmentation import SegDeviceTransform
from .zeroshot import retrieval_recall, zero_shot_classifier

__all__ = ["ClipTask", "ClipDeviceTransform", "ZeroShotTask", "build_clip_task", "is_clip_dataset",
           "build_clip_tokenizer", "load_run_tokenizer", "CLIP_ASSET"]

CLIP_ASSET = "clip.json"  # what `vitlab zeroshot RUN` needs to rebuild the run's preprocessing and tokenizer


def is_clip_dataset(name: str) -> bool:
    return name in CLASS_CAPTIONED_DATASETS or is_image_text_dataset(name)


class ClipDeviceTransform(SegDeviceTransform):
    """uint8 (B, C, H, W) → normalised float images (the segmentation transform's normalisation); in training with
    `hflip`, a random horizontal flip per image (in-memory data only: encoded data is cropped by its decoder, the one
    random-crop owner)."""

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = self.normalise(images)
        if self.hflip:
            flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)  # (B,)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images


@dataclass
class ZeroShotTask:
    """A labelled image split classified from `class_names` × `templates`."""
    loader: DeviceLoader | EncodedLoader
    class_names: list[str]
    templates: list[str]
    size: int


def _local_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy within one local batch (evaluation: no gathering across ranks)."""
    logits = scale * image_features @ text_features.t()  # (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class _Towers:
    """`encode_image` / `encode_text` through the (possibly DDP / FSDP-wrapped) model's forward, which accepts
    `None` for the tower it should skip, so wrappers see a forward call."""

    def __init__(self, model: nn.Module):
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, None)[0]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.model(None, text)[1]


@dataclass
class ClipTask:
    """Contrastive image–text training for the engine (see the module docstring)."""
    train: DeviceLoader | EncodedLoader
    transform: ClipDeviceTransform
    tokenizer: object  # (list[str]) -> (N, L) int64; ClipBPETokenizer, BertWordPieceTokenizer or CaptionTokenizer
    tokenizer_spec: str
    context_length: int
    in_chans: int
    image_size: int
    train_size: int
    eval_pairs: DeviceLoader | EncodedLoader | None = None  # image–caption pairs: loss + retrieval
    eval_size: int = 0
    zeroshot: ZeroShotTask | None = None
    caption_table: torch.Tensor | None = None  # (K, T, L) class-captioned training: class k, training template t
    eval_caption_table: torch.Tensor | None = None  # (K, T', L) held-out templates, for the evaluation loss
    mean: tuple = ()
    std: tuple = ()
    files: list = field(default_factory=list)
    tokenizer_path: str | None = None  # where a 'clip' / 'bert' vocabulary was read from (None: the search places)
    config: TrainConfig | None = None
    name = "clip"
    unit = "images"

    def __post_init__(self) -> None:
        self.loss_fn = ClipLoss()

    @property
    def primary(self) -> tuple[str, str]:
        return ("zeroshot_top1", "max") if self.zeroshot is not None else ("eval_loss", "min")

    def model_kwargs(self) -> dict:
        """The towers' inputs: the image tower's size and channels; the text tower's vocabulary when the
        tokenizer was trained here (a 'clip' / 'bert' vocabulary is the model's own and is checked instead)."""
        text = {"vocab_size": self.tokenizer.vocab_size} if isinstance(self.tokenizer, CaptionTokenizer) else {}
        return {"image_kwargs": {"img_size": self.image_size, "in_chans": self.in_chans}, "text_kwargs": text}

    def check_model(self, name: str) -> None:
        check_model_family(self.config, name, "clip")

    def prepare_model(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        """The text tower takes this tokenizer's ids and context length (said plainly before training); with
        `freeze_text` the image tower learns against a fixed text tower (CLIPA)."""
        text = model.text
        if self.tokenizer.vocab_size > text.vocab_size:
            raise ValueError(f"tokenizer {self.tokenizer_spec!r} has {self.tokenizer.vocab_size} tokens, the text "
                             f"tower's vocabulary {text.vocab_size}")
        if self.context_length > text.context_length:
            raise ValueError(f"context_length {self.context_length} exceeds the text tower's "
                             f"{text.context_length} positions")
        if config.freeze_text:
            text.requires_grad_(False)
        return model

    def notes(self) -> list[str]:
        return []

    def example_input(self, device: torch.device):
        images = torch.zeros(2, self.in_chans, self.image_size, self.image_size, device=device)
        return images, torch.zeros(2, self.context_length, dtype=torch.long, device=device)

    def samples_per_batch(self, batch_size: int) -> int:
        return batch_size  # image–text pairs per optimiser step

    def describe(self) -> str:
        parts = [f"{self.train_size} train image–text pairs"]
        if self.eval_pairs is not None:
            parts.append(f"{self.eval_size} eval pairs")
        if self.zeroshot is not None:
            parts.append(f"zero-shot on {self.zeroshot.size} images × {len(self.zeroshot.class_names)} classes × "
                         f"{len(self.zeroshot.templates)} templates")
        return ", ".join(parts) + f", tokenizer {self.tokenizer_spec} (context {self.context_length})"

    def save_assets(self, out_dir) -> None:
        """`clip.json` (normalisation, input size, tokenizer, zero-shot class names and templates) and, for a
        tokenizer trained here, its files in `tokenizer/`: what `vitlab zeroshot RUN` needs."""
        out_dir = Path(out_dir)
        meta = {"mean": list(self.mean), "std": list(self.std), "in_chans": self.in_chans,
                "image_size": self.image_size, "tokenizer": self.tokenizer_spec,
                "context_length": self.context_length,
                "class_names": self.zeroshot.class_names if self.zeroshot else [],
                "templates": self.zeroshot.templates if self.zeroshot else []}
        if isinstance(self.tokenizer, CaptionTokenizer):
            self.tokenizer.tokenizer.save(out_dir / "tokenizer")
            meta["tokenizer_dir"] = "tokenizer"
        else:
            meta["tokenizer_path"] = self.tokenizer_path
        write_text_atomic(out_dir / CLIP_ASSET, json.dumps(meta, indent=1))

    def _captions(self, labels: torch.Tensor, table: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, L) tokens: each label's caption under a template drawn uniformly (on the CPU generator)."""
        pick = torch.randint(table.shape[1], (labels.shape[0],), generator=generator).to(labels.device)  # (B,)
        return table[labels.long(), pick]

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        images, second = batch
        images = self.transform(images, generator=generator)  # (B, C, H, W)
        tokens = second if self.caption_table is None else self._captions(second, self.caption_table, generator)
        image_features, text_features, scale = model(images, tokens)  # (B, D), (B, D), ()
        return self.loss_fn(image_features.float(), text_features.float(), scale.float())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, info: DistInfo, autocast) -> dict:
        """Whatever the data has: contrastive loss and retrieval recall on image–caption pairs, zero-shot top-1 /
        top-5 on a labelled split (both summed across ranks). Class-captioned data scores both on one pass over its
        images (its zero-shot split is its evaluation split)."""
        classifier = self._zeroshot_classifier(model, info, autocast) if self.zeroshot is not None else None
        shared = classifier is not None and self.zeroshot.loader is self.eval_pairs
        metrics: dict = {}
        if self.eval_pairs is not None:
            metrics.update(self._evaluate_pairs(model, info, autocast, classifier if shared else None))
        if classifier is not None and not shared:
            metrics.update(self._evaluate_zeroshot(model, info, autocast, classifier))
        return metrics

    def _zeroshot_classifier(self, model: nn.Module, info: DistInfo, autocast) -> torch.Tensor:
        with autocast:
            return zero_shot_classifier(_Towers(model), self.zeroshot.class_names, self.zeroshot.templates,
                                        self.tokenizer, device=info.device)  # (D, K)

    @staticmethod
    def _zeroshot_hits(image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """(top-1 hits, top-5 hits, images) of one batch, float64."""
        logits = F.normalize(image_features.float(), dim=-1) @ classifier  # (B, K)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, 5)
        hits = top == labels.to(top.device)[:, None]
        return torch.stack([hits[:, 0].sum().double(), hits.any(-1).sum().double(),
                            torch.tensor(float(len(labels)), dtype=torch.float64, device=top.device)])

    @staticmethod
    def _zeroshot_metrics(sums: torch.Tensor, info: DistInfo) -> dict:
        top1, top5, count = all_reduce_sum(sums, info).tolist()
        return {"zeroshot_top1": 100 * top1 / count, "zeroshot_top5": 100 * top5 / count}

    def _evaluate_pairs(self, model: nn.Module, info: DistInfo, autocast,
                        classifier: torch.Tensor | None = None) -> dict:
        """The contrastive loss per evaluation batch (local batches, averaged over images) and, for captioned
        images, retrieval recall over the whole split; class-captioned data draws held-out captions with seed 0 and,
        given the zero-shot `classifier`, is scored zero-shot on the same image features."""
        generator = torch.Generator().manual_seed(0)
        sums = torch.zeros(2, dtype=torch.float64, device=info.device)  # loss · B, B
        zeroshot = torch.zeros(3, dtype=torch.float64, device=info.device)  # top1, top5, count
        images_seen, texts_seen = [], []
        self.eval_pairs.set_epoch(0)
        for images, second in self.eval_pairs:
            tokens = second if self.eval_caption_table is None else \
                self._captions(second, self.eval_caption_table, generator)
            with autocast:
                image_features, text_features, scale = model(self.transform.normalise(images), tokens)
            image_features, text_features = image_features.float(), text_features.float()
            loss = _local_clip_loss(image_features, text_features, scale.float())
            sums += torch.stack([loss.double() * len(images), torch.tensor(float(len(images)), dtype=torch.float64,
                                                                             device=info.device)])
            if classifier is not None:
                zeroshot += self._zeroshot_hits(image_features, second, classifier)
            if self.eval_caption_table is None:
                images_seen.append(image_features.cpu())
                texts_seen.append(text_features.cpu())
        loss_sum, count = all_reduce_sum(sums, info).tolist()
        metrics = {"eval_loss": loss_sum / max(count, 1)}
        if classifier is not None:
            metrics.update(self._zeroshot_metrics(zeroshot, info))
        if self.eval_caption_table is None and images_seen:
            image_features, text_features = torch.cat(images_seen), torch.cat(texts_seen)
            if info.enabled:  # every rank's features (evaluation splits are small enough to hold)
                parts = [None] * info.world_size
                dist.all_gather_object(parts, (image_features, text_features))
                image_features = torch.cat([p[0] for p in parts])
                text_features = torch.cat([p[1] for p in parts])
            recall = retrieval_recall(image_features, text_features)
            metrics.update(recall)
            metrics["recall_mean"] = sum(recall.values()) / len(recall)
        return metrics

    def _evaluate_zeroshot(self, model: nn.Module, info: DistInfo, autocast, classifier: torch.Tensor) -> dict:
        towers = _Towers(model)
        sums = torch.zeros(3, dtype=torch.float64, device=info.device)  # top1, top5, count
        self.zeroshot.loader.set_epoch(0)
        for images, labels in self.zeroshot.loader:
            with autocast:
                features = towers.encode_image(self.transform.normalise(images))
            sums += self._zeroshot_hits(features, labels, classifier)
        return self._zeroshot_metrics(sums, info)


# ----------------------------------------------------------------------------------------------------------------
# building


def build_clip_tokenizer(spec: str, captions, context_length: int, path: str | None = None):
    """'clip' / 'bert' from local vocabulary files, or 'bpe:N' trained on `captions` (wrapped in CLIP's format)."""
    if spec in ("clip", "bert"):
        return load_text_tokenizer(spec, path, context_length=context_length)
    kind, size = parse_tokenizer_spec(spec)
    if kind != "bpe":
        raise ValueError(f"tokenizer {spec!r} cannot feed a CLIP text tower: use 'clip' or 'bert' (local vocabulary "
                         "files) or 'bpe:N' (a byte-level BPE trained on the training captions)")
    return CaptionTokenizer(BPETokenizer.train(list(captions), size) if size else BPETokenizer.train(list(captions)),
                            context_length)


def load_run_tokenizer(run_dir: str | Path, meta: dict | None = None):
    """The tokenizer a CLIP run trained with, from its `clip.json` (and `tokenizer/` for one trained there)."""
    run_dir = Path(run_dir)
    meta = meta if meta is not None else json.loads((run_dir / CLIP_ASSET).read_text())
    if meta.get("tokenizer_dir"):
        return CaptionTokenizer(load_tokenizer(run_dir / meta["tokenizer_dir"]), meta["context_length"])
    return load_text_tokenizer(meta["tokenizer"], meta.get("tokenizer_path"), context_length=meta["context_length"])


def _context_length(config: TrainConfig) -> int:
    """`context_length`, else the registered model's (CLIPA: 32), else CLIP's 77 for its BPE, else 32."""
    from ...models import get_pretrained_cfg

    if config.context_length:
        return config.context_length
    cfg = get_pretrained_cfg(config.model)
    if cfg.get("context_length"):
        return int(cfg["context_length"])
    text_kwargs = config.model_kwargs.get("text_kwargs", {}) if isinstance(config.model_kwargs, dict) else {}
    if text_kwargs.get("context_length"):
        return int(text_kwargs["context_length"])
    return 77 if config.tokenizer == "clip" else 32


def _templates(config: TrainConfig) -> list[str]:
    return read_templates(config.templates or DEFAULT_TEMPLATES_FILE)


def _check_augment(config: TrainConfig, encoded: bool) -> None:
    default = type(config.augment)()
    allowed = {"random_resized_crop", "rrc_scale", "rrc_ratio"} if encoded else {"hflip"}
    asked = [name for name in vars(default) if getattr(config.augment, name) != getattr(default, name)
             and name not in allowed]
    if asked:
        where = "the decoder's random-resized crop (augment.random_resized_crop, rrc_scale, rrc_ratio)" if encoded \
            else "augment.hflip"
        raise ValueError(f"augment.{asked[0]} does not apply to CLIP training here; image–text data takes {where}")


def build_clip_task(config: TrainConfig, info: DistInfo) -> ClipTask:
    """Both splits of a CLIP dataset, the tokenizer, and the zero-shot task (see the module docstring)."""
    if config.head is not None:
        raise ValueError(f"head={config.head!r} is for semantic segmentation; {config.dataset!r} is image–text data")
    per_rank = per_rank_batch(config, info)
    context = _context_length(config)
    templates = _templates(config)
    if config.dataset in CLASS_CAPTIONED_DATASETS:
        return _class_captioned(config, info, per_rank, context, templates)
    return _image_text(config, info, per_rank, context, templates)


def _class_captioned(config, info, per_rank, context, templates) -> ClipTask:
    _check_augment(config, encoded=False)
    held = config.heldout_templates
    if not 0 <= held < len(templates):
        raise ValueError(f"heldout_templates={held}: the templates file has {len(templates)} templates, and at "
                         "least one must remain for training captions")
    train_templates, eval_templates = (templates[:-held], templates[-held:]) if held else (templates, templates)
    source = CLASS_CAPTIONED_DATASETS[config.dataset]
    common = dict(data_dir=config.data_dir, download=config.download and info.is_main, image_size=config.image_size)
    train_set = load_dataset(source, config.train_split, **common).subset(config.train_subset)
    eval_set = load_dataset(source, config.eval_split, **common).subset(config.eval_subset)
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than batch_size {config.batch_size}")
    names = list(train_set.classes)
    tokenizer = build_clip_tokenizer(config.tokenizer, [t.format(n) for t in train_templates for n in names],
                                     context, config.tokenizer_path)

    def table(chosen: list[str]) -> torch.Tensor:
        rows = tokenizer([t.format(n) for n in names for t in chosen])  # (K · T, L)
        return rows.view(len(names), len(chosen), -1).to(info.device)  # (K, T, L)

    loader = dict(device=info.device, rank=info.rank, world_size=info.world_size)
    train = DeviceLoader(train_set.images, train_set.labels, batch_size=per_rank, shuffle=True, drop_last=True,
                         seed=config.seed, **loader)
    evaluation = DeviceLoader(eval_set.images, eval_set.labels, batch_size=max(per_rank, 256), shuffle=False,
                              drop_last=False, seed=0, **loader)
    transform = ClipDeviceTransform(train_set.mean, train_set.std, hflip=config.augment.hflip).to(info.device)
    return ClipTask(train=train, transform=transform, tokenizer=tokenizer, tokenizer_spec=config.tokenizer,
                    context_length=context, in_chans=train_set.in_chans, image_size=train_set.images.shape[-1],
                    train_size=len(train_set), eval_pairs=evaluation, eval_size=len(eval_set),
                    zeroshot=ZeroShotTask(evaluation, names, eval_templates, len(eval_set)),
                    caption_table=table(train_templates), eval_caption_table=table(eval_templates),
                    mean=tuple(train_set.mean), std=tuple(train_set.std),
                    files=list(dict.fromkeys(list(train_set.files) + list(eval_set.files))), config=config)


def _image_text(config, info, per_rank, context, templates) -> ClipTask:
    _check_augment(config, encoded=True)
    if config.heldout_templates:
        raise ValueError("heldout_templates applies to class-captioned datasets (fashion_mnist_captions); "
                         f"{config.dataset!r} has its own captions")
    plan = config_plan(config)  # the decoder owns the (random-resized) crop; the device only normalises
    train_crop, eval_crop = plan.train_decode, plan.eval_decode
    size = train_crop.size
    common = dict(on_error=config.data_errors)
    train_set = load_image_text_dataset(config.dataset, config.train_split, tokenizer=None, crop=train_crop, **common)
    tokenizer = build_clip_tokenizer(config.tokenizer, train_set.captions, context, config.tokenizer_path)
    train_set.tokenizer = tokenizer
    eval_set = None
    if config.eval_split:
        eval_set = load_image_text_dataset(config.dataset, config.eval_split, tokenizer=tokenizer, crop=eval_crop,
                                           **common).subset(config.eval_subset)
    files = list(train_set.files) + (list(eval_set.files) if eval_set is not None else [])
    train_set = train_set.subset(config.train_subset)
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} pairs, fewer than batch_size {config.batch_size}")
    loader = dict(device=info.device, rank=info.rank, world_size=info.world_size, num_workers=config.num_workers)
    train = EncodedLoader(train_set, per_rank, shuffle=True, drop_last=True, seed=config.seed,
                          shuffle_buffer=config.shuffle_buffer, **loader)
    evaluation = None if eval_set is None else EncodedLoader(eval_set, max(per_rank, 256), shuffle=False,
                                                             drop_last=False, seed=0, shuffle_buffer=0, **loader)
    zeroshot = None
    if config.zeroshot_dataset:
        images = load_dataset(config.zeroshot_dataset, config.zeroshot_split, data_dir=config.data_dir,
                              image_size=size, decode_crop=eval_crop, on_error=config.data_errors)
        images = images.subset(config.eval_subset)
        names = class_names_from_file(config.class_names) if config.class_names else \
            [str(c).replace("_", " ") for c in images.classes]
        if all(re.fullmatch(r"n\d{8}", name) for name in names):
            raise ValueError(f"{config.zeroshot_dataset}'s classes are WordNet ids ({names[0]}, ...), not names a text "
                             "tower can read: pass class_names=/path/to/LOC_synset_mapping.txt (ImageNet's)")
        if len(names) != images.num_classes:
            raise ValueError(f"class_names {config.class_names} lists {len(names)} names, {config.zeroshot_dataset} "
                             f"has {images.num_classes} classes")
        files += list(images.files)
        zeroshot = ZeroShotTask(EncodedLoader(images, max(per_rank, 256), shuffle=False, drop_last=False, seed=0,
                                              shuffle_buffer=0, **loader), names, templates, len(images))
    if evaluation is None and zeroshot is None:
        raise ValueError("nothing to evaluate: set eval_split (image–caption pairs) and/or zeroshot_dataset")
    transform = ClipDeviceTransform(train_set.mean, train_set.std, hflip=False).to(info.device)
    return ClipTask(train=train, transform=transform, tokenizer=tokenizer, tokenizer_spec=config.tokenizer,
                    context_length=context, in_chans=3, image_size=size, train_size=len(train_set),
                    eval_pairs=evaluation, eval_size=len(eval_set) if eval_set is not None else 0, zeroshot=zeroshot,
                    mean=tuple(train_set.mean), std=tuple(train_set.std), files=list(dict.fromkeys(files)),
                    tokenizer_path=config.tokenizer_path, config=config)
