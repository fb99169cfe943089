"""Images/s per CPU core of the ImageNet-style input pipeline at 224 px: timm's loader transforms against
vitlab.data.decode, on the same JPEG files, in one run.

Command (from the repository root; the results in docs/data.md, "Fast decode", come from the default):

    python benchmarks/decode_throughput.py                      # 300 images, 5 interleaved repeats, ~2 min on 2 cores
    python benchmarks/decode_throughput.py --cores 16 --json decode.json   # also 16 processes together (GPU machine)

The files: real photographs (scikit-image's astronaut, chelsea, coffee, rocket, motorcycle, hubble_deep_field,
retina; scikit-learn's china and flower), each file a random crop of one photograph resized (Lanczos) to 500 x 375
(60 %, ImageNet's median size), 375 x 500 (20 %, portrait), 1024 x 768 or 768 x 1024 (10 % each) and saved as a
baseline 4:2:0 JPEG at quality 75, 85, 90 or 95, in an ImageFolder tree (10 class folders) and, the same bytes, in
WebDataset shards (`key.jpg` + `key.cls`, written with webdataset.TarWriter). The 1024-px files are upscaled from
photographs of 300-1411 px, so they are smoother (fewer JPEG coefficients, faster to decode) than native ones.

The pipelines (each in its own process: one core, torch.set_num_threads(1), no DataLoader workers), ending with a
normalised float32 (64, 3, 224, 224) batch unless said otherwise:
- timm train: `Image.open(path).convert("RGB")` (timm's ImageDataset) → timm.data.create_transform(224,
  is_training=True, color_jitter=None): RandomResizedCropAndInterpolation(scale (0.08, 1), bilinear), flip 0.5,
  ToTensor, Normalize → torch.stack (the DataLoader's collate).
- vitlab train files: `ImageFolderDataset[(index, seed)]`, what an EncodedLoader worker calls: read the file →
  decode_image(DecodeCrop(224, train=True)) with a random.Random per sample → (3, 224, 224) uint8 → torch.stack
  → DeviceAugment(hflip) on the CPU
  (uint8 → float, flip, normalise, soft targets): the cost the GPU takes over in training is counted here.
- vitlab train shards: the same through `ShardDataset` (the member bytes read from the tar by offset).
- "normalise on GPU" pair, both ending with a uint8 batch: timm with use_prefetcher=True (its train.py default:
  crop, flip, ToNumpy, timm's fast_collate; its PrefetchLoader normalises on the GPU) against vitlab files without
  DeviceAugment (flip and normalisation on the GPU). The CPU cost of feeding a GPU.
- timm / vitlab eval: Resize(256) + CenterCrop(224) (crop_pct 0.875), ToTensor + Normalize or
  DeviceAugment.eval_transform.
Repeats are interleaved (every pipeline once, then again); the median is reported, and "vs timm" is the median over
repeats of the ratio within a repeat (robust to load that drifts during the run). `--cores N` runs N processes of
the timm and vitlab-files train pipelines together and reports their total. Peak RSS is
each pipeline process's ru_maxrss (imports included: timm's processes also import torchvision and timm). All
processes run with MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 1 GiB (unless set): glibc would otherwise hand
every 38 MB batch back to the kernel and page-fault it in again (see benchmarks/augment_throughput.py); it applies
to both libraries alike. The ablation times the stages of one train crop alone, on bytes in memory.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = [(500, 375)] * 6 + [(375, 500)] * 2 + [(1024, 768), (768, 1024)]  # (width, height), cycled
QUALITIES = (75, 85, 90, 95)
NUM_CLASSES = 10
TIMM_PREFETCHER, VITLAB_UINT8 = "timm train, normalise on GPU", "vitlab train files, normalise on GPU"
TRAIN = ("timm train", "vitlab train files", "vitlab train shards", TIMM_PREFETCHER, VITLAB_UINT8)
EVAL = ("timm eval", "vitlab eval files", "vitlab eval shards")
GROUPS = (TRAIN[:3], TRAIN[3:], EVAL)  # compared with the first of each group
MULTI = ("timm train", "vitlab train files", TIMM_PREFETCHER, VITLAB_UINT8)  # --cores: N processes each
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


# ---------------------------------------------------------------------------------------------------------------
# the files
def photographs() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea(),
            "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(),
            "motorcycle": skimage.data.stereo_motorcycle()[0], "hubble": skimage.data.hubble_deep_field(),
            "retina": skimage.data.retina(), "china": china, "flower": flower}


def build_dataset(workdir: Path, count: int, seed: int = 0) -> dict:
    """ImageFolder tree `workdir/train/<class>/<key>.jpg` and shards `workdir/shards/train-<k>.tar` of the same
    bytes; returns the file list, the shard index and a description."""
    import webdataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = list(photographs().items())
    files, total = [], 0
    shard_dir = workdir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    writer, shard_paths = None, []
    for i in range(count):
        name, photo = sources[i % len(sources)]
        width, height = SIZES[i % len(SIZES)]
        rows, cols = photo.shape[:2]
        side = rng.uniform(0.75, 1.0) * min(rows, cols * height / width)  # crop of the target aspect ratio
        crop_h, crop_w = int(side), int(side * width / height)
        top, left = rng.integers(0, rows - crop_h + 1), rng.integers(0, cols - crop_w + 1)
        image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize((width, height),
                                                                                   Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITIES[i % len(QUALITIES)])
        data, label, key = buffer.getvalue(), i % NUM_CLASSES, f"{name}_{i:05d}"
        path = workdir / "train" / f"class{label}" / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append((str(path), label))
        total += len(data)
        if i % 100 == 0:
            if writer is not None:
                writer.close()
            shard_paths.append(str(shard_dir / f"train-{i // 100:04d}.tar"))
            writer = webdataset.TarWriter(shard_paths[-1])
        writer.write({"__key__": key, "jpg": data, "cls": label})
    writer.close()
    mix = {f"{w}x{h}": sum(1 for i in range(count) if SIZES[i % len(SIZES)] == (w, h)) for w, h in set(SIZES)}
    return {"files": files, "shards": shard_paths,
            "description": {"images": count, "sizes": mix, "qualities": list(QUALITIES),
                            "mean_kib": round(total / count / 1024, 1), "photographs": [n for n, _ in sources]}}


# ---------------------------------------------------------------------------------------------------------------
# the pipelines (built and run inside their own process)
def timm_pipeline(name: str, files, batch: int):
    sys.path.insert(0, str(REPO / "tests"))
    from torchvision_shim import import_torchvision

    import_torchvision()
    import timm.data
    import torch
    from PIL import Image
    from timm.data.loader import fast_collate

    prefetcher = name == TIMM_PREFETCHER  # timm's train.py default: uint8 out, normalised on the GPU
    transform = (timm.data.create_transform(224, is_training=True, color_jitter=None, use_prefetcher=prefetcher)
                 if name in TRAIN else timm.data.create_transform(224, is_training=False))
    random.seed(0)  # timm's crop and flip draw from Python's global random

    def run(items=files):
        samples = []
        for i, (path, label) in enumerate(items):
            samples.append((transform(Image.open(path).convert("RGB")), label))  # (3, 224, 224)
            if len(samples) == batch or i == len(items) - 1:
                if prefetcher:
                    fast_collate(samples)  # uint8 (B, 3, 224, 224), as timm's loader with the prefetcher
                else:
                    torch.stack([x for x, _ in samples]), torch.tensor([y for _, y in samples])  # default collate
                samples = []
    return run


def vitlab_pipeline(name: str, files, shards, batch: int):
    """vitlab's product path: what an `EncodedLoader` worker does for each sample, `dataset[(index, seed)]` of an
    `ImageFolderDataset` (reads the file) or a `ShardDataset` (reads the member by offset), then the batch."""
    import torch

    from vitlab.data import DecodeCrop, ImageFolderDataset, ShardDataset
    from vitlab.data.augment import AugmentConfig, DeviceAugment

    train = name in TRAIN
    crop = DecodeCrop(224, train=train)
    dataset = (ShardDataset(shards, crop) if shards is not None  # indexes the tars here, before any timing
               else ImageFolderDataset(files, [f"class{k}" for k in range(NUM_CLASSES)], crop=crop))
    augment = DeviceAugment(AugmentConfig(hflip=True), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), NUM_CLASSES)
    on_cpu = name != VITLAB_UINT8  # else flip + normalise are left to the GPU
    generator = torch.Generator().manual_seed(0)

    def run(indices=range(len(dataset))):
        images, labels = [], []
        for n, i in enumerate(indices):
            image, label = dataset[(i, i)]  # uint8 (3, 224, 224): decode → crop → resize, one seeded rng per sample
            images.append(image)
            labels.append(label)
            if len(images) == batch or n == len(indices) - 1:
                x, y = torch.stack(images), torch.tensor(labels)  # (B, 3, 224, 224) uint8
                if on_cpu:
                    augment(x, y, generator) if train else augment.eval_transform(x)  # float (B, 3, 224, 224)
                images, labels = [], []
    return run


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(name: str, files, shards, batch: int, conn) -> None:
    """Build one pipeline, warm it up, then time a full pass over the files at each 'run' until 'stop'."""
    import torch

    torch.set_num_threads(1)
    run = (timm_pipeline(name, files, batch) if name.startswith("timm")
           else vitlab_pipeline(name, files, shards if name.endswith("shards") else None, batch))
    setup_rss = peak_rss_mib()
    run(files[:batch] if name.startswith("timm") else range(batch))  # warm-up
    conn.send(setup_rss)
    while conn.recv() == "run":
        start = time.perf_counter()
        run()
        conn.send(time.perf_counter() - start)
    conn.send(peak_rss_mib())


def start_workers(names, copies: int, data: dict, batch: int):
    context = multiprocessing.get_context("spawn")
    workers = []
    for name in names:
        for _ in range(copies):
            parent, child = context.Pipe()
            process = context.Process(target=worker, args=(name, data["files"], data["shards"], batch, child))
            process.start()
            child.close()  # only the worker holds its end: a worker that dies makes recv() raise at once, not hang
            workers.append((name, process, parent))
    setup = {}
    for name, process, conn in workers:
        try:
            setup[name] = conn.recv()
        except EOFError:
            process.join()
            raise SystemExit(f"the {name} worker died while starting (exit code {process.exitcode}); its traceback "
                             "is above") from None
    return workers, setup


def measure(names, data: dict, repeats: int, batch: int, copies: int = 1) -> dict:
    """Interleaved repeats; `copies` processes per pipeline run together (total throughput)."""
    workers, setup = start_workers(names, copies, data, batch)
    seconds = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            group = [conn for n, _, conn in workers if n == name]
            start = time.perf_counter()
            for conn in group:
                conn.send("run")
            for conn in group:
                conn.recv()
            seconds[name].append(time.perf_counter() - start)
    peak = {}
    for name, process, conn in workers:
        conn.send("stop")
        peak[name] = max(peak.get(name, 0.0), conn.recv())
        process.join()
    count = len(data["files"]) * copies
    return {name: {"images_per_s": [round(count / s, 1) for s in seconds[name]],
                   "median_images_per_s": round(count / statistics.median(seconds[name]), 1),
                   "per_core_images_per_s": round(count / statistics.median(seconds[name]) / copies, 1),
                   "peak_rss_mib": round(peak[name], 1), "rss_after_imports_mib": round(setup[name], 1)}
            for name in names}


# ---------------------------------------------------------------------------------------------------------------
# ablation: the stages of one train crop, per image, on bytes in memory
def ablation(files, repeats: int) -> dict[str, float | str]:
    """ms/image of each stage of the train crop, alone, on bytes in memory; the same crop boxes for every variant
    (internal stages of vitlab.data.decode are called directly)."""
    import simplejpeg
    import torch
    from PIL import Image

    import vitlab.data.decode as vitlab_decode
    from vitlab.data.decode import DecodeCrop, _reduction, _resize, decode_image, random_resized_crop_box

    torch.set_num_threads(1)
    blobs = [Path(path).read_bytes() for path, _ in files]
    sizes = [simplejpeg.decode_jpeg_header(data)[1::-1] for data in blobs]  # (width, height)
    boxes = [random_resized_crop_box(w, h, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(i))
             for i, (w, h) in enumerate(sizes)]
    ks = [_reduction(min(r - l, b - t), 224) for l, t, r, b in boxes]
    full_pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in blobs]
    full_np = [simplejpeg.decode_jpeg(data) for data in blobs]

    def simplejpeg_scaled(i):
        (w, h), k = sizes[i], ks[i]
        return simplejpeg.decode_jpeg(blobs[i], min_height=-(-h // k), min_width=-(-w // k), min_factor=k)

    def pillow_draft(i):
        img = Image.open(io.BytesIO(blobs[i]))
        img.draft("RGB", (img.size[0] // ks[i], img.size[1] // ks[i]))
        return img.convert("RGB")

    scaled_np = [simplejpeg_scaled(i) for i in range(len(blobs))]

    def torch_resize(array, i, k):
        left, top, right, bottom = (round(edge / k) for edge in boxes[i])
        return _resize(array[top:bottom, left:right], 224, 224)

    def decode_image_with_pillow(i):  # decode_image where simplejpeg is not installed
        saved, vitlab_decode.simplejpeg = vitlab_decode.simplejpeg, None
        try:
            return decode_image(blobs[i], DecodeCrop(224, train=True), random.Random(i))
        finally:
            vitlab_decode.simplejpeg = saved

    stages = {
        "decode: Pillow, full size (timm)": lambda i: Image.open(io.BytesIO(blobs[i])).convert("RGB"),
        "decode: Pillow, draft 1/k": pillow_draft,
        "decode: simplejpeg, full size": lambda i: simplejpeg.decode_jpeg(blobs[i]),
        "decode: simplejpeg, 1/k (vitlab)": simplejpeg_scaled,
        "resize: Pillow crop, then resize (torchvision)":
            lambda i: full_pil[i].crop(boxes[i]).resize((224, 224), Image.Resampling.BILINEAR),
        "resize: Pillow resize(box=crop), one call":
            lambda i: full_pil[i].resize((224, 224), Image.Resampling.BILINEAR, box=boxes[i]),
        "resize: torch uint8 antialiased, full-size crop": lambda i: torch_resize(full_np[i], i, 1),
        "resize: torch uint8 antialiased, 1/k crop (vitlab)": lambda i: torch_resize(scaled_np[i], i, ks[i]),
        "all: decode_image, Pillow decoder (no simplejpeg)": decode_image_with_pillow,
        "all: decode_image (vitlab)": lambda i: decode_image(blobs[i], DecodeCrop(224, train=True), random.Random(i)),
    }
    for m in range(1, 9):  # libjpeg-turbo's M/8 scales: only 1/8, 2/8, 4/8 (and 8/8) run its fast IDCTs
        stages[f"decode: simplejpeg, whole image at {m}/8"] = (
            lambda i, m=m: simplejpeg.decode_jpeg(blobs[i], min_height=-(-sizes[i][1] * m // 8),
                                                  min_width=-(-sizes[i][0] * m // 8)))
    large = [i for i, k in enumerate(ks) if k > 1]  # the crops that DCT scaling applies to
    for name in ("decode: simplejpeg, full size", "decode: simplejpeg, 1/k (vitlab)"):
        stages[f"{name}, only crops with k > 1"] = (stages[name], large)
    times = {name: [] for name in stages}
    for _ in range(repeats):
        for name, stage in stages.items():
            stage, indices = stage if isinstance(stage, tuple) else (stage, range(len(blobs)))
            start = time.perf_counter()
            for i in indices:
                stage(i)
            times[name].append((time.perf_counter() - start) / max(len(indices), 1) * 1e3)
    result: dict[str, float | str] = {name: round(statistics.median(t), 3) for name, t in times.items()}
    result["crops decoded at 1/1, 1/2, 1/4, 1/8"] = " / ".join(f"{ks.count(k) / len(ks):.0%}" for k in (1, 2, 4, 8))
    return result


def ablation_worker(files, repeats: int, conn) -> None:
    conn.send(ablation(files, repeats))


# ---------------------------------------------------------------------------------------------------------------
# report
def environment() -> dict:
    import PIL
    import torch

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except ImportError:
            return None

    sys.path.insert(0, str(REPO / "tests"))
    from torchvision_shim import import_torchvision

    import_torchvision()
    from vitlab._profile import cpu_name

    cpu = cpu_name()

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"torch": torch.__version__, "Pillow": PIL.__version__, "simplejpeg": version("simplejpeg"),
            "timm": version("timm"), "numpy": np.__version__, "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "git_commit": git("rev-parse", "HEAD"),
            "decode_py_uncommitted": bool(git("status", "--porcelain", "--", "vitlab/data/decode.py")),
            "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV}, "command": " ".join(sys.argv),
            "load_average_at_end": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists()
            else None}


def ratios(results: dict, groups) -> dict[str, float]:
    """vitlab / timm per group: the median over repeats of the ratio within each repeat (robust to load drift)."""
    out = {}
    for group in groups:
        base = results[group[0]]["images_per_s"]
        for name in group[1:]:
            out[name] = round(statistics.median(v / b for v, b in zip(results[name]["images_per_s"], base)), 3)
    return out


def markdown(results: dict, ablation_ms: dict | None, multi: dict | None, cores: int) -> str:
    lines = ["| pipeline | images/s per core (median) | repeats | vs timm | peak RSS MiB |", "|---|---|---|---|---|"]
    versus = ratios(results, GROUPS)
    for group in GROUPS:
        for name in group:
            r = results[name]
            lines.append(f"| {name} | {r['median_images_per_s']:.0f} | "
                         f"{', '.join(f'{v:.0f}' for v in r['images_per_s'])} | {versus.get(name, 1.0):.2f}x | "
                         f"{r['peak_rss_mib']:.0f} |")
    if multi:
        versus = ratios(multi, (MULTI[:2], MULTI[2:]))
        lines += ["", f"| pipeline, {cores} processes | images/s total | per core | vs timm |", "|---|---|---|---|"]
        for name in MULTI:
            r = multi[name]
            lines.append(f"| {name} | {r['median_images_per_s']:.0f} | {r['per_core_images_per_s']:.0f} | "
                         f"{versus.get(name, 1.0):.2f}x |")
    if ablation_ms:
        lines += ["", "| train crop stage (one image, bytes in memory) | ms/image (median) |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in ablation_ms.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cores", type=int, default=0, help="also run N processes per train pipeline together")
    parser.add_argument("--workdir", type=Path, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= args.images:
        parser.error(f"--batch {args.batch} must be between 1 and --images {args.images} (each pipeline warms up "
                     "on one batch of the files)")
    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)  # inherited by the spawned pipeline processes
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        start = time.perf_counter()
        load_before = os.getloadavg()
        data = build_dataset(workdir, args.images)
        print(f"{args.images} JPEGs in {workdir} ({data['description']['mean_kib']} KiB each on average), "
              f"built in {time.perf_counter() - start:.0f} s", flush=True)
        results = measure(TRAIN + EVAL, data, args.repeats, args.batch)
        multi = measure(MULTI, data, args.repeats, args.batch, copies=args.cores) if args.cores > 1 else None
        ablation_ms = None
        if not args.no_ablation:
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            process = context.Process(target=ablation_worker, args=(data["files"], args.repeats, child))
            process.start()
            ablation_ms = parent.recv()
            process.join()
    env = environment()
    env["load_average_at_start"] = [round(v, 2) for v in load_before]  # other processes on the machine, if any
    print(markdown(results, ablation_ms, multi, args.cores))
    print(f"\n{env['cpu']} ({env['cpu_count']} CPUs), torch {env['torch']}, Pillow {env['Pillow']}, simplejpeg "
          f"{env['simplejpeg']}, timm {env['timm']}, commit {env['git_commit'][:10]}; load average "
          f"{env['load_average_at_start']} at the start, {env['load_average_at_end']} at the end")
    if args.json:
        multi_ratios = multi and ratios(multi, (MULTI[:2], MULTI[2:]))
        args.json.write_text(json.dumps({"pipelines": results, "ratio_vs_timm": ratios(results, GROUPS),
                                         "multi_process": multi, "multi_process_ratio_vs_timm": multi_ratios,
                                         "cores": args.cores, "ablation_ms_per_image": ablation_ms,
                                         "dataset": data["description"], "batch": args.batch,
                                         "repeats": args.repeats, "environment": env}, indent=2))


if __name__ == "__main__":
    main()
