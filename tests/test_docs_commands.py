"""Every command in README.md and docs/*.md runs as written, in a fresh working directory, shortened by overrides.

The commands are read from the Markdown itself: each line of a ```bash block (backslash continuations joined, `# ...`
comments dropped; a block that is a script, `#!...` or a here-document, is one command) and each ```python block.
`PLANS` says for each how it is run:
- `Run(extra=...)`: as written plus `extra` appended: key=value overrides (`SHORT`: 2 optimiser steps on a few
  images) or flags (`--seeds 0`, `--images 8`), never a change of what the command does;
- `Run(replace=...)`: a named textual edit where the written command cannot run on a 2-core CPU machine as is: 2
  processes instead of 8, two shards of a 1000-shard brace pattern, a smaller model size;
- `Elsewhere(reason)`: verified by another check, named in the reason (the CI script runs the install and test
  command itself).
Paths the docs use as placeholders are the same for every command: `/data` is a folder of fixtures written in the
published formats (ImageNet and ImageNet-21k ImageFolder trees, ADE20K, OpenWebText archives, foreign WebDataset
shards), downloads (`download=true`, `pretrained=True`) come from a local HTTP server on 127.0.0.1, `~` is a
temporary home, `RUN_DIR` a trained run, and photo.jpg a real photograph (scikit-image's `chelsea`).

Each document runs in its own empty directory, in order (later commands read the runs earlier ones wrote). `vitlab`
commands run in this process (`vitlab.cli.main`), `python -c` too (with the environment assignments written before
it); `torchrun`, `python benchmarks/...` and scripts run in a shell. A command added to the docs without a plan fails
`test_every_documented_command_has_a_plan`, and so does a plan whose command left the docs.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from local_http import server  # noqa: F401  (the fixture)
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FASHION = ROOT.parent / "shared" / "data" / "fashion-mnist"
needs_shared_data = pytest.mark.skipif(not FASHION.is_dir(), reason="../shared/data/fashion-mnist is absent")

# 2 optimiser steps of 32 images, evaluated on 32: every training command's shortening
SHORT = "steps=2 warmup_steps=0 warmup_epochs=0 train_subset=64 eval_subset=32 batch_size=32"
SHORT_LM = "steps=2 warmup_steps=0 eval_interval=2 eval_subset=8 batch_size=4"
COMPARE = f"--seeds 0 {SHORT}"
SHORT_BENCH = "steps=2 warmup_epochs=0 train_subset=64 eval_subset=32 batch_size=32"  # benchmark scripts' runs


def documented_commands() -> list[tuple[str, str, str]]:
    """(document, command, 'python' | 'shell') in document order, as the module docstring describes."""
    out = []
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M):
            if lang == "python":
                out.append((name, body.strip(), "python"))
            elif lang in ("bash", "sh"):
                if body.startswith("#!") or "<<'" in body:
                    out.append((name, body.strip(), "shell"))
                    continue
                for line in body.replace("\\\n", " ").splitlines():
                    line = re.sub(r"\s+", " ", re.sub(r"\s+#\s.*$", "", line)).strip()
                    if line and not line.startswith("#"):
                        out.append((name, line, "shell"))
    return out


def plan_key(command: str) -> str:
    """A command's key in PLANS: the command itself; for a Python block or a script its first two non-blank lines."""
    lines = [re.sub(r"\s+#\s.*$", "", line).rstrip() for line in command.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else "\n".join(lines[:2])


@dataclass(frozen=True)
class Run:
    extra: str = ""  # appended to the command as written
    replace: tuple[tuple[str, str], ...] = ()  # named textual edits (see the module docstring)
    needs: tuple[str, ...] = ()  # fixtures prepared before the command (FIXTURES)
    prelude: str = ""  # Python blocks: names the snippet uses without defining (images, a model, a file's bytes)
    once: bool = False  # documented in several places, nothing after it reads its output: run once per session


@dataclass(frozen=True)
class Elsewhere:
    reason: str


OFFICIAL = ("official_crate_alpha_b16", "official_crate_s16", "hf_vit_b16")
GPU_LM = f"{SHORT_LM} grad_accum_steps=1 block_size=32 model_kwargs.n_layer=1"  # GPT-2 size, 1 layer, 2 steps
GPU_IMAGE = "model_kwargs.depth=1 eval_subset=4 train_subset=8 batch_size=4 num_workers=1"  # ViT-B at 224 px
PLANS: dict[str, Run | Elsewhere] = {
    # ---- README.md
    "pip install -c constraints/cpu.txt -e . && vitlab train fashion_mnist_vit_mimetic download=true": Run(SHORT),
    'pip install -c constraints/cpu.txt -e ".[dev]" && python -m pytest -q': Elsewhere(
        ".ci/run runs this command, with --durations=25 (test_ci_guards checks it); running it here would recurse"),
    'import vitlab\nvitlab.list_models("crate_alpha_*")':
        Run(prelude="images = torch.rand(2, 3, 32, 32)"),
    'import timm, vitlab\nvit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=2, num_classes=10)':
        Run(),
    'model = vitlab.create_model("crate_alpha_b16", checkpoint_path="crate_alpha_B16.pth")\n'
    'model = vitlab.create_model("crate_s16", checkpoint_path="model_best.pth.tar")':
        Run(needs=(*OFFICIAL, "pretrained_crate_alpha_b16"), prelude="import vitlab"),
    'import vitlab\nmodel = vitlab.load("runs/fashion_mnist_vit_mimetic")': Run(),
    "vitlab presets": Run(),
    "vitlab train cifar10_vit_tiny_mimetic data_dir=/data download=true": Run(
        f"{SHORT} model_kwargs.depth=2", needs=("cifar10_server",)),
    "vitlab train fashion_mnist_crate_alpha epochs=5 augment.hflip=false": Run(SHORT),
    "vitlab eval runs/fashion_mnist_crate_alpha": Run("eval_subset=32"),
    "torchrun --nproc_per_node 8 -m vitlab train crate_alpha_in21k_pretrain data_dir=/data": Run(
        GPU_IMAGE + " " + SHORT.replace("train_subset=64 eval_subset=32 batch_size=32", ""),
        replace=(("--nproc_per_node 8", "--nproc_per_node 2"),), needs=("imagenet21k",), once=True),
    "vitlab shards imagenet /data/imagenet-wds --data-dir /data --split train,val": Run(needs=("imagenet",)),
    "torchrun --nproc_per_node 8 -m vitlab train crate_alpha_in1k_finetune dataset=shards "
    "data_dir=/data/imagenet-wds grad_checkpointing=true distributed=fsdp": Run(
        GPU_IMAGE + " steps=2 warmup_steps=0 warmup_epochs=0 shuffle_buffer=8",
        replace=(("--nproc_per_node 8", "--nproc_per_node 2"),)),
    "vitlab compare all --results docs/results.md": Run(COMPARE),
    "vitlab compare mimetic_fashion": Run(COMPARE),  # after `compare all`: reuses its runs
    "vitlab plot-weights init:vit_tiny_patch2_32": Run(),
    "vitlab plot-weights runs/fashion_mnist_vit_mimetic": Run(),
    "vitlab compare clip_fashion --seeds 0,1 epochs=1 --results /tmp/quick/results.md": Run(SHORT),
    "vitlab train shakespeare_char_gpt": Run(SHORT_LM),
    'vitlab generate runs/shakespeare_char_gpt --prompt "ROMEO:" --seed 0': Run("--max-new-tokens 20"),
    "vitlab compare lm_shakespeare": Run(f"--seeds 0 {SHORT_LM}"),
    "vitlab train openwebtext_crate_alpha_lm_base data_dir=/data": Run(GPU_LM, needs=("openwebtext",)),
    "vitlab attention runs/fashion_mnist_crate_alpha fashion_mnist:test:0 photo.jpg": Run(needs=("photo",)),
    "vitlab segment runs/fashion_mnist_crate_alpha photo.jpg --save-masks": Run(),
    "vitlab segment runs/fashion_mnist_crate_alpha --evaluate fashion_mnist": Run("--limit 16"),
    "vitlab attention crate_alpha_B16.pth --model crate_alpha_b16 photo.jpg": Run(
        "--layers 0,11 --heads 0,1", needs=("official_crate_alpha_b16", "photo")),
    "vitlab train fashion_scenes_crate_alpha_upernet": Run(SHORT),
    "vitlab eval runs/fashion_scenes_crate_alpha_upernet": Run("eval_subset=8"),
    "vitlab segment --head runs/fashion_scenes_crate_alpha_upernet fashion_mnist_scenes:test:0 photo.jpg": Run(),
    "vitlab train ade20k_crate_alpha_b16_upernet data_dir=/data/ade": Run(
        "steps=2 warmup_steps=0 batch_size=2 image_size=64 model_kwargs.img_size=64 eval_subset=2 eval_stride=64",
        needs=("ade20k", "pretrained_crate_alpha_b16"), once=True),  # the preset starts from the official B/16
    "vitlab train fashion_mnist_clip_crate_alpha": Run(SHORT),
    'vitlab zeroshot runs/fashion_mnist_clip_crate_alpha item.png --classes "ankle boot,sneaker,sandal,bag,trouser"':
        Run(needs=("item",)),
    # ---- docs/augment.md
    "from vitlab.data.augment import AugmentConfig, DeviceAugment\nfrom vitlab.data.loader import DeviceLoader": Run(
        replace=(('device="cuda"', 'device="cpu"'),),
        prelude="import torch; from vitlab.data import load_dataset; from vitlab.models import create_model\n"
                "train = load_dataset('fashion_mnist', 'train'); test = load_dataset('fashion_mnist', 'test')\n"
                "train_images, train_labels, test_images = (train.images[:1024].expand(-1, 3, -1, -1).contiguous(), "
                "train.labels[:1024], test.images[:64].expand(-1, 3, -1, -1))\n"
                "model = create_model('vit_tiny_patch4_32', img_size=28, patch_size=7, depth=1)"),
    # ---- docs/clip.md
    'import vitlab\nmodel = vitlab.create_model("clip", image_model="crate_alpha_tiny_patch4_32", embed_dim=64,': Run(),
    'model = vitlab.create_model("crate_alpha_clipa_l14", checkpoint_path="crate_alpha_CLIPA_L14.pth")': Run(
        replace=(('"crate_alpha_CLIPA_L14.pth")', '"crate_alpha_CLIPA_L14.pth", **small_kwargs())'),),
        needs=("official_clipa",), prelude="import vitlab\nfrom test_clipa_official import small_kwargs"),
    "python -c \"from vitlab.data import load_dataset; from PIL import Image; Image.fromarray(load_dataset("
    "'fashion_mnist', 'test').images[0, 0].numpy()).save('item.png')\"": Run(),
    # ---- docs/clusters.md
    "export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1": Run(),
    "#!/bin/bash\n#SBATCH --job-name=vit_b16": Elsewhere(
        "a SLURM batch script (sbatch, scontrol, srun): there is no SLURM here; the torchrun line it runs is the "
        "README's, run above with 2 processes, and test_run_habits checks the SIGTERM / SIGUSR1 save-and-exit"),
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HEAD:29500 --rdzv_id vit_b16 -m "
    "vitlab train crate_alpha_in21k_pretrain data_dir=/shared/data out_dir=/shared/runs/vit_b16": Run(
        GPU_IMAGE + " " + SHORT.replace("train_subset=64 eval_subset=32 batch_size=32", ""),
        replace=(("--nnodes 2 --nproc_per_node 8", "--nnodes 1 --nproc_per_node 2"), ("HEAD:29500", "127.0.0.1:0"),
                 ("/shared/data", "/data"), ("/shared/runs", "runs")), needs=("imagenet21k",)),
    # ---- docs/data.md
    'from vitlab.data import load_dataset, find_data_root, DATASETS\ntrain = load_dataset("cifar10", "train", '
    'download=True)': Run(needs=("cifar10_server", "imagenet")),
    'load_dataset("cifar10", download=True, data_dir="~/data")\nload_dataset("svhn", "test", download=True)': Run(
        needs=("cifar10_server", "svhn_server"), prelude="from vitlab.data import load_dataset"),
    "sudo apt-get install dataset-fashion-mnist": Elsewhere(
        ".ci/run installs this package (as root or with sudo -n) and tests/test_data.py reads "
        "/usr/share/datasets/fashion-mnist"),
    "VITLAB_DATA=~/data python -c \"from vitlab.data import load_dataset; load_dataset('tiny_imagenet', "
    "download=True)\"": Run(needs=("tiny_imagenet_server",)),
    "vitlab shards imagenet /data/imagenet-wds --data-dir /data --split train,val --shard-size 5000": Run(
        needs=("imagenet",)),
    "vitlab train crate_in1k dataset=shards data_dir=/data/imagenet-wds": Run(
        GPU_IMAGE + " steps=2 warmup_steps=0 warmup_epochs=0 shuffle_buffer=8"),
    "vitlab train crate_in1k dataset=shards data_dir=/data/laion train_split='train-{000000..000999}.tar' "
    "eval_split='val-{000000..000001}.tar' out_dir=runs/crate_in1k_laion": Run(
        GPU_IMAGE + " steps=2 warmup_steps=0 warmup_epochs=0 shuffle_buffer=8",
        replace=(("{000000..000999}", "{000000..000001}"),), needs=("laion",)),
    "import random\nfrom vitlab.data.decode import DecodeCrop, ImageDecodeError, decode_image": Run(
        needs=("photo",), prelude="seed = 0; jpeg_bytes = open('photo.jpg', 'rb').read()\n"
                                  "import shutil; shutil.copy('photo.jpg', 'x.jpg')"),
    "python benchmarks/decode_throughput.py --json decode.json": Run("--images 8 --batch 4 --repeats 1 --no-ablation"),
    # ---- docs/interpret.md
    "vitlab attention RUN_DIR photo.jpg fashion_mnist:test:0 --out maps/": Run(needs=("run_dir", "photo")),
    "vitlab segment RUN_DIR photo.jpg fashion_mnist:test:0 --out maps/ --save-masks": Run(),
    "vitlab segment RUN_DIR --evaluate fashion_mnist:test": Run("--limit 16"),
    "vitlab segment RUN_DIR img/a.jpg img/b.jpg --masks masks/": Run(needs=("own_masks",)),
    "vitlab attention model_best.pth.tar --model crate_s16 photo.jpg": Run(
        "--layers 0,11 --heads 0,1", needs=("official_crate_s16",)),
    "from vitlab.interpret import (record_attention, cls_attention, attention_rollout, patch_features, pca_rgb,\n"
    "                              unsupervised_masks, segmentation_scores, load_model, grid_shape)": Run(
        needs=("run_dir",), prelude="from vitlab.data import load_dataset\n"
                                    "images = load_dataset('fashion_mnist', 'test').images[:4].float() / 255"),
    # ---- docs/language.md
    'vitlab generate runs/shakespeare_char_gpt --prompt "ROMEO:" --max-new-tokens 300 --seed 0': Run(),
    "vitlab eval runs/shakespeare_char_gpt eval_split=val": Run("eval_subset=8"),
    "vitlab train shakespeare_char_gpt_mimetic": Run(SHORT_LM),
    "vitlab train openwebtext_gpt2 data_dir=/data": Run(GPU_LM, needs=("openwebtext",)),
    "vitlab train shakespeare_char_gpt dataset=textfile:my.txt tokenizer=bpe:8192 out_dir=runs/my_text": Run(
        SHORT_LM, needs=("my_txt",)),
    # ---- docs/mimetic.md
    "import timm, torch, transformers, vitlab\nfrom vitlab.init import mimetic_init_, norm_matched_init_": Run(
        replace=(("transformers.ViTConfig()", "transformers.ViTConfig(num_hidden_layers=2)"),)),  # 12 → 2 layers
    "python - <<'PY'\nimport time, torch, vitlab": Run(replace=(
        ('stats("vit_tiny_patch2_32", embed_dim=768, num_heads=12)', "pass  # d=768: 20 s, shortened"),
        ("for d, H in ((192, 3), (384, 6)):", "for d, H in ((192, 3),):"))),
    # ---- docs/segmentation.md
    "import torch, vitlab\nmodel = vitlab.create_model(\"crate_alpha_base_patch16_224\", pretrained=True, "
    "img_size=512)": Run(needs=("pretrained_crate_alpha_b16",), prelude="x = torch.randn(1, 3, 512, 512)"),
    "vitlab train fashion_scenes_crate_alpha_linear": Run(SHORT),
    "vitlab segment --head runs/fashion_scenes_crate_alpha_upernet fashion_mnist_scenes:test:0 photo.jpg "
    "--save-masks": Run(needs=("photo",)),
    "vitlab compare semantic_segmentation": Run(COMPARE),
    "python benchmarks/sliding_window.py": Run(
        "--models crate_alpha_tiny_patch4_32:linear --size 40x56 --crop 32 --stride 21 --classes 3 --dtypes fp32"),
    # ---- docs/speed.md
    "python benchmarks/fashion_speedrun.py --seeds 0 1 2 --json docs/fashion_speedrun.json": Run(
        f"{SHORT_BENCH} --target 0",
        replace=(("--seeds 0 1 2 --json docs/fashion_speedrun.json", "--seeds 0 --json speedrun.json"),)),
    "python benchmarks/fashion_speedrun.py --seeds 0 1 2 --json docs/fashion_speedrun_fp32.json precision=fp32": Run(
        f"{SHORT_BENCH} --target 0",
        replace=(("--seeds 0 1 2 --json docs/fashion_speedrun_fp32.json", "--seeds 0 --json speedrun.json"),)),
    "python benchmarks/fashion_mnist_presets.py --presets fashion_mnist_crate_alpha --seeds 0 1 2 --out "
    "docs/fashion_mnist_crate_alpha_bf16.json": Run(
        SHORT_BENCH,
        replace=(("--seeds 0 1 2 --out docs/fashion_mnist_crate_alpha_bf16.json", "--seeds 0 --out ca.json"),)),
    "python benchmarks/fashion_mnist_presets.py --presets fashion_mnist_crate_alpha --seeds 0 1 2 --out "
    "docs/fashion_mnist_crate_alpha_fp32.json precision=fp32": Run(
        SHORT_BENCH,
        replace=(("--seeds 0 1 2 --out docs/fashion_mnist_crate_alpha_fp32.json", "--seeds 0 --out ca.json"),)),
    "python benchmarks/bf16_cpu.py --json docs/bf16_cpu.json": Run(
        "--models vit_tiny_patch4_32 --batch 4 --steps 1 --repeats 1",
        replace=(("docs/bf16_cpu.json", "bf16.json"),)),
    "python benchmarks/attention_cpu.py --json docs/attention_cpu.json": Run(
        "--calls 1 --repeats 1 --shapes 2,2,17,8,0 2,2,33,8,1 --models",
        replace=(("docs/attention_cpu.json", "attn.json"),)),
    "python benchmarks/vs_nanogpt.py --nanogpt PATH/nanoGPT --pairs 2 --json docs/vs_nanogpt_cpu.json": Elsewhere(
        "needs a nanoGPT checkout and 8 minutes; tests/test_vs_nanogpt.py runs the script end to end against a "
        "stand-in nanoGPT train.py"),
    "python benchmarks/vs_nanogpt.py --nanogpt PATH/nanoGPT --pairs 1 --json docs/vs_nanogpt_cpu_fp32.json "
    "precision=fp32": Elsewhere("the same script as above, with a vitlab override; tests/test_vs_nanogpt.py passes "
                                "overrides through"),
    "python benchmarks/vs_official_crate.py --official-crate PATH/CRATE --official-crate-alpha PATH/CRATE-alpha "
    "--json docs/vs_official_crate.json": Elsewhere(
        "needs the official repositories' checkouts; tests/test_benchmarks_official.py runs the script against "
        "stand-in official files in their layout"),
    "python benchmarks/crate_algebra.py --ratios 1 2 4 --json docs/crate_algebra.json": Run(
        "--batch 2 --windows 1 --calls 1",
        replace=(("--ratios 1 2 4 --json docs/crate_algebra.json", "--ratios 1 --json algebra.json"),)),
    # ---- docs/training.md
    "vitlab train fashion_mnist_vit_mimetic": Run(SHORT),
    "vitlab train cifar10_vit_tiny_mimetic data_dir=/data download=true epochs=50 augment.randaugment_m=9": Run(
        f"{SHORT} model_kwargs.depth=2", needs=("cifar10_server",)),
    "vitlab eval runs/cifar10_vit_tiny_mimetic": Run(),
    "python benchmarks/grad_checkpointing.py --json gc.json": Run("--models vit_tiny_patch16_224:2 --steps 1"),
}


# ---------------------------------------------------------------- fixtures the commands need
@dataclass
class Context:
    work: Path  # the document's working directory
    cache: Path  # files shared by every document (the full-size official checkpoints)
    server: tuple  # (base URL, handler) of the local HTTP server
    monkeypatch: pytest.MonkeyPatch
    namespace: dict = field(default_factory=dict)

    @property
    def data(self) -> Path:  # what the docs call /data
        return self.work / "data"


def _shared(ctx: Context, name: str, write) -> Path:
    """A large file written once per session into the shared cache and linked into the working directory."""
    path = ctx.cache / name
    if not path.exists():
        write(path)
    link = ctx.work / name
    if not link.exists():
        link.symlink_to(path)
    return link


def _official_crate_alpha_b16(ctx):  # the PyTorch port's crate_alpha_B16.pth layout at its real size
    from test_convert import official_crate_alpha_state_dict

    _shared(ctx, "crate_alpha_B16.pth", lambda p: torch.save(
        official_crate_alpha_state_dict(d=768, depth=12, patch=16, img=224, classes=1000), p))


def _official_crate_s16(ctx):  # official CRATE training output: a module.-prefixed state_dict in a checkpoint dict
    from test_convert import official_crate_state_dict

    def write(path):
        sd = official_crate_state_dict(d=576, depth=12, heads=12, patch=16, img=224, classes=1000)
        torch.save({"epoch": 90, "arch": "CRATE_small", "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    _shared(ctx, "model_best.pth.tar", write)


def _hf_vit_b16(ctx):  # a Hugging Face ViTForImageClassification (ViT-B/16, 1000 classes) model.safetensors
    def write(path):
        import transformers
        from safetensors.torch import save_file

        hf = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000))
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    _shared(ctx, "model.safetensors", write)


def _pretrained_crate_alpha_b16(ctx):  # pretrained=True: the official URL's file, served on 127.0.0.1
    from vitlab.models._registry import _CFGS

    _official_crate_alpha_b16(ctx)
    base, handler = ctx.server
    handler.files["/torch/crate_alpha_B16.pth"] = (ctx.cache / "crate_alpha_B16.pth").read_bytes()
    name = "crate_alpha_base_patch16_224"
    ctx.monkeypatch.setitem(_CFGS, name, {**_CFGS[name], "url": f"{base}/torch/crate_alpha_B16.pth"})


def _official_clipa(ctx):
    from test_clipa_official import official_state_dict

    torch.save(official_state_dict(), ctx.work / "crate_alpha_CLIPA_L14.pth")


def _serve_dataset(ctx, name: str, files: dict[str, bytes], extracted: Path | None = None):
    """Serve `files` (remote file name → bytes) in place of `name`'s official URLs, with their checksums, and
    accept the fixture's extracted files in place of the official per-file checksums."""
    from data_fixtures import md5
    from test_data import fixture_checksums
    from vitlab.data._sources import DATASETS

    base, handler = ctx.server
    info = DATASETS[name]
    remote = []
    for r in info.remote:
        file = r.url.rsplit("/", 1)[-1]
        if file in files:
            handler.files[f"/{name}/{file}"] = files[file]
            r = dataclasses.replace(r, url=f"{base}/{name}/{file}", md5=md5(files[file]))
        remote.append(r)
    ctx.monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, remote=tuple(remote)))
    if extracted is not None:
        fixture_checksums(ctx.monkeypatch, name, extracted)


def _cifar10_server(ctx):
    from data_fixtures import tar_gz, write_cifar10

    folder = ctx.cache / "src-cifar10" / "cifar-10-batches-py"  # written once per session
    if not folder.exists():
        write_cifar10(ctx.cache / "src-cifar10", per_batch=40)
    _serve_dataset(ctx, "cifar10", {"cifar-10-python.tar.gz": tar_gz(folder)}, folder)


def _svhn_server(ctx):
    from data_fixtures import write_svhn

    write_svhn(ctx.work / "src-svhn", "test")
    _serve_dataset(ctx, "svhn", {"test_32x32.mat": (ctx.work / "src-svhn" / "test_32x32.mat").read_bytes()},
                   ctx.work / "src-svhn")


def _tiny_imagenet_server(ctx):
    from data_fixtures import write_tiny_imagenet, zip_bytes

    _serve_dataset(ctx, "tiny_imagenet", {"tiny-imagenet-200.zip": zip_bytes(write_tiny_imagenet(ctx.work / "src-ti"))})


WNIDS = ("n01440764", "n01443537", "n01484850")


def _photos(count: int, size: int = 64):
    """Crops of scikit-image's real photographs, as RGB PIL images."""
    from skimage import data as photos

    sources = [photos.chelsea(), photos.astronaut(), photos.coffee(), photos.rocket()]
    for i in range(count):
        image = sources[i % len(sources)]
        y, x = (17 * i) % (image.shape[0] - size), (29 * i) % (image.shape[1] - size)
        yield Image.fromarray(np.ascontiguousarray(image[y:y + size, x:x + size]))


def _image_tree(root: Path, splits: tuple[str, ...], per_class: int = 4):
    """<root>/<split>/<wnid>/<wnid>_<k>.JPEG: ImageNet's ImageFolder layout, real photographs."""
    photos = _photos(len(splits) * len(WNIDS) * per_class)
    for split in splits:
        for wnid in WNIDS:
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                next(photos).save(root / split / wnid / f"{wnid}_{k}.JPEG", quality=90)


def _imagenet(ctx):
    _image_tree(ctx.data / "imagenet", ("train", "val"))


def _imagenet21k(ctx):
    _image_tree(ctx.data / "imagenet21k", ("train",))


def _laion(ctx):  # foreign WebDataset shards: KEY.jpg + KEY.cls, no index.json
    from data_fixtures import tar_bytes

    folder = ctx.data / "laion"
    folder.mkdir(parents=True)
    photos = _photos(24)
    for name, count in (("train-000000.tar", 8), ("train-000001.tar", 8), ("val-000000.tar", 4), ("val-000001.tar", 4)):
        members = {}
        for k in range(count):
            buffer = io.BytesIO()
            next(photos).save(buffer, format="JPEG", quality=90)
            members[f"{name[:-4]}_{k:04d}.jpg"] = buffer.getvalue()
            members[f"{name[:-4]}_{k:04d}.cls"] = str(k % 3).encode()
        (folder / name).write_bytes(tar_bytes(members))


def _ade20k(ctx):
    from data_fixtures import write_ade

    write_ade(ctx.data / "ade")


def _openwebtext(ctx):  # openwebtext.tar.xz's inner urlsf_subset*.xz archives, and GPT-2's BPE files
    from data_fixtures import tar_bytes
    from test_text import write_gpt2_files

    folder = ctx.data / "openwebtext"
    folder.mkdir(parents=True)
    text = (FASHION.parent / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    documents = [text[i:i + 4000].encode() for i in range(0, len(text), 4000)]
    for s in range(2):
        members = {f"urlsf_subset0{s}-1_data/{k}.txt": d for k, d in enumerate(documents[s::2])}
        (folder / f"urlsf_subset0{s}-1_data.xz").write_bytes(tar_bytes(members, "xz"))
    ctx.monkeypatch.setenv("VITLAB_GPT2_BPE", str(write_gpt2_files(ctx.work / "gpt2")))


def _photo(ctx):
    from skimage import data as photos

    Image.fromarray(photos.chelsea()).save(ctx.work / "photo.jpg", quality=92)


def _item(ctx):
    from vitlab.data import load_dataset

    Image.fromarray(load_dataset("fashion_mnist", "test").images[0, 0].numpy()).save(ctx.work / "item.png")


def _run_dir(ctx):  # RUN_DIR and runs/my_run: a CRATE-α run on Fashion-MNIST
    from vitlab.cli import main

    assert main(["train", "fashion_mnist_crate_alpha", *SHORT.split(), "out_dir=runs/my_run"]) == 0


def _own_masks(ctx):  # img/a.jpg, img/b.jpg and their foreground masks masks/a.png, masks/b.png
    for stem, image in zip("ab", _photos(2, size=96)):
        (ctx.work / "img").mkdir(exist_ok=True)
        (ctx.work / "masks").mkdir(exist_ok=True)
        image.save(ctx.work / "img" / f"{stem}.jpg")
        mask = np.zeros((96, 96), np.uint8)
        mask[20:70, 30:80] = 255
        Image.fromarray(mask).save(ctx.work / "masks" / f"{stem}.png")


def _my_txt(ctx):
    text = (FASHION.parent / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    (ctx.work / "my.txt").write_text(text[:100_000], encoding="utf-8")


FIXTURES = {"official_crate_alpha_b16": _official_crate_alpha_b16, "official_crate_s16": _official_crate_s16,
            "hf_vit_b16": _hf_vit_b16, "pretrained_crate_alpha_b16": _pretrained_crate_alpha_b16,
            "official_clipa": _official_clipa, "cifar10_server": _cifar10_server, "svhn_server": _svhn_server,
            "tiny_imagenet_server": _tiny_imagenet_server, "imagenet": _imagenet, "imagenet21k": _imagenet21k,
            "laion": _laion, "ade20k": _ade20k, "openwebtext": _openwebtext, "photo": _photo, "item": _item,
            "run_dir": _run_dir, "own_masks": _own_masks, "my_txt": _my_txt}


# ---------------------------------------------------------------- running one command
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_as_run(command: str, plan: Run, ctx: Context) -> str:
    """The command with its plan's edits and extra arguments, and the shared placeholders filled in."""
    for old, new in plan.replace:
        assert old in command, f"plan edit {old!r} no longer matches the documented command {command!r}"
        command = command.replace(old, new)
    if plan.extra:
        command = f"{command} {plan.extra}" if "\n" not in command else command
    command = re.sub(r"(?<![\w./~])/data\b", str(ctx.data), command)
    command = command.replace("/tmp/quick", str(ctx.work / "quick")).replace("RUN_DIR", "runs/my_run")
    return command.replace("127.0.0.1:0", f"127.0.0.1:{_free_port()}")


def run_command(command: str, kind: str, plan: Run, ctx: Context) -> None:
    from vitlab.cli import main

    for need in plan.needs:
        FIXTURES[need](ctx)
    text = command_as_run(command, plan, ctx)
    print(f"\n$ {text}", flush=True)
    if kind == "python":
        namespace = {"torch": torch}
        exec(compile(plan.prelude, "<prelude>", "exec"), namespace)
        exec(compile(text, "<documented snippet>", "exec"), namespace)
        return
    for part in [p.strip() for p in text.split("&&")]:
        if part.startswith("pip install"):
            continue  # the editable install under test; .ci/run runs this line (test_ci_guards)
        if part.startswith("export "):
            name, value = part.removeprefix("export ").split("=", 1)
            ctx.monkeypatch.setenv(name, value)
            continue
        words = shlex.split(part)
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = os.path.expanduser(value)
        for name, value in env.items():
            ctx.monkeypatch.setenv(name, value)
        if words[0] == "vitlab":
            assert main(words[1:]) == 0, f"exit status != 0: {part}"
        elif words[:2] == ["python", "-c"]:
            exec(compile(words[2], "<python -c>", "exec"), {"__name__": "__main__"})
        else:  # torchrun, python benchmarks/..., scripts: in a shell, as a user would
            result = subprocess.run(["bash", "-c", part], cwd=ctx.work, capture_output=True, text=True,
                                    timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
            assert result.returncode == 0, f"exit status {result.returncode}: {part}\n{result.stderr[-3000:]}"


# ---------------------------------------------------------------- the tests
def test_every_documented_command_has_a_plan():
    documented = {plan_key(command) for _, command, _ in documented_commands()}
    missing = sorted(documented - PLANS.keys())
    stale = sorted(PLANS.keys() - documented)
    assert not missing, f"documented commands without a plan in PLANS (say how this test runs them): {missing}"
    assert not stale, f"plans whose command is no longer documented (remove them): {stale}"


def test_extraction_reads_blocks_continuations_and_comments(tmp_path, monkeypatch):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```bash\nvitlab a b=1   # comment\n# only a comment\nvitlab c \\\n    d=2\n```\n"
                   "```\noutput, not a command\n```\n```python\nimport vitlab\nvitlab.x()\n```\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert documented_commands() == [("x.md", "vitlab a b=1", "shell"), ("x.md", "vitlab c d=2", "shell"),
                                     ("x.md", "import vitlab\nvitlab.x()", "python")]


RAN_ONCE: set[str] = set()  # `once` commands that already ran in this session


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("docs-cache")


@needs_shared_data
@pytest.mark.parametrize("doc", list(dict.fromkeys(d for d, _, _ in documented_commands())))
def test_documented_commands_run(doc, tmp_path, monkeypatch, server, shared_cache):
    commands = [(c, kind) for d, c, kind in documented_commands() if d == doc]
    work = tmp_path / "work"
    work.mkdir()
    for name in ("benchmarks", "constraints"):  # what the documented paths refer to in a clone
        (work / name).symlink_to(ROOT / name)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITLAB_CACHE", str(shared_cache / "vitlab-cache"))  # downloaded weights: once
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    ctx = Context(work, shared_cache, server, monkeypatch)
    ran = 0
    for command, kind in commands:
        plan = PLANS[plan_key(command)]
        if isinstance(plan, Elsewhere) or (plan.once and command in RAN_ONCE):
            continue
        start = time.perf_counter()
        run_command(command, kind, plan, ctx)
        print(f"[{time.perf_counter() - start:.1f} s] {plan_key(command)[:100]}", flush=True)
        if plan.once:
            RAN_ONCE.add(command)
        ran += 1
    assert ran > 0
