"""Mutated-file fuzzing of every vitlab reader (issue 23), run as `python tests/fuzz_readers.py READER WORKDIR START`
in a subprocess with an address-space cap, so that a mutant that eats memory or hangs cannot take pytest with it.

For each reader: a small valid file set written by the project's own writers (or, for the official formats, as the
format defines), then seeded mutants of one of its files (bit flips, truncation, byte insertion / deletion,
field edits). Each case prints one JSON line: {"case", "kind", "file", "outcome": "ok" | "error", "type",
"message", "seconds"}. "ok" means the reader loaded it and every sample was read to the end."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import time
from pathlib import Path

MEMORY_LIMIT = 4 << 30  # bytes of address space for the whole subprocess
CASE_SECONDS = 10  # per case: a SIGALRM raises CaseTimeout


class CaseTimeout(BaseException):
    """A case ran past CASE_SECONDS (BaseException: no reader's `except Exception` may swallow it)."""


# ---------------------------------------------------------------------------------------------- generic mutations
def byte_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """n mutants of `data`: bit flips, truncations, inserted and deleted byte runs, a run of 0xff."""
    out = []
    kinds = ["bitflip", "truncate", "insert", "delete", "ff_run"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        buf = bytearray(data)
        pos = rng.randrange(len(buf))
        if kind == "bitflip":
            for _ in range(rng.choice((1, 1, 3, 8))):
                p = rng.randrange(len(buf))
                buf[p] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 512))))
        elif kind == "delete":
            del buf[pos:pos + rng.choice((1, 5, 100))]
        else:
            buf[pos:pos + 8] = b"\xff" * 8
        out.append((f"{kind}@{pos}", bytes(buf)))
    return out


def json_mutants(obj, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """n mutants of a JSON document: a value replaced by a huge / negative number, a string, null, a list, a
    100 000-deep nesting, a key dropped; plus raw byte mutants of its text."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + [key])
        elif isinstance(node, list):
            for k, value in enumerate(node[:3]):
                walk(value, path + [k])

    walk(obj, [])
    replacements = [10 ** 12, -1, 2 ** 63, "x", None, [], {}, 1.5, True]
    out = []
    for i in range(n):
        new = json.loads(json.dumps(obj))
        path = rng.choice(paths[1:] or paths)
        parent = new
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1] if path else None
        choice = i % 4
        if choice == 3 and isinstance(parent, dict) and last is not None:
            del parent[last]
            kind = f"drop {path}"
            text = json.dumps(new)
        elif choice == 2 and last is not None:
            parent[last] = "@DEEP@"
            kind = f"deep {path}"
            text = json.dumps(new).replace('"@DEEP@"', "[" * 100_000 + "]" * 100_000)
        elif last is not None:
            value = rng.choice(replacements)
            parent[last] = value
            kind = f"set {path}={value!r}"
            text = json.dumps(new)
        else:
            kind, text = "root=list", "[]"
        out.append((kind, text.encode()))
    raw = json.dumps(obj).encode()
    return out + byte_mutants(raw, rng, max(2, n // 4))


def tar_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Tar header edits (a member's size field huge / negative / non-octal, a name changed), then byte mutants."""
    out = []
    headers = [off for off in range(0, len(data) - 512, 512) if data[off + 257:off + 262] == b"ustar"]
    for k, value in enumerate([b"77777777777\x00", b"-0000000001\x00", b"zzzzzzzzzzz\x00", b"\x80" + b"\xff" * 11]):
        off = headers[(k * 3) % len(headers)]
        buf = bytearray(data)
        buf[off + 124:off + 136] = value
        buf[off + 148:off + 156] = _tar_checksum(buf[off:off + 512])
        out.append((f"size field {value!r} at header {off}", bytes(buf)))
    off = headers[1 % len(headers)]
    buf = bytearray(data)
    buf[off:off + 100] = b"../../escape.jpg".ljust(100, b"\x00")
    buf[off + 148:off + 156] = _tar_checksum(buf[off:off + 512])
    out.append((f"member renamed ../../escape.jpg at {off}", bytes(buf)))
    return out + byte_mutants(data, rng, n - len(out))


def _tar_checksum(header: bytes | bytearray) -> bytes:
    block = bytearray(header)
    block[148:156] = b" " * 8
    return b"%06o\x00 " % sum(block)


# ---------------------------------------------------------------------------------------------- the readers
def _crop():
    from vitlab.data.decode import DecodeCrop

    return DecodeCrop(size=8)


def _tokenizer(texts):
    import torch

    return torch.tensor([[b % 64 for b in t.encode("utf-8")[:8].ljust(8, b"\0")] for t in texts], dtype=torch.long)


def _read_all(dataset) -> None:
    for i in range(len(dataset)):
        dataset[i]


def _png(seed: int, size=(12, 10)) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(seed: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(_png(seed, (16, 16)))).save(buffer, format="JPEG")
    return buffer.getvalue()


class Reader:
    """One reader: `build(folder)` writes a valid file set and returns the files to mutate (paths relative to
    folder) with their mutation kind; `load(folder)` reads everything (raises on a bad file)."""

    mutants_per_file = 12

    def build(self, folder: Path) -> list[tuple[str, str]]:
        raise NotImplementedError

    def load(self, folder: Path) -> None:
        raise NotImplementedError


class Idx(Reader):
    mutants_per_file = 15

    def build(self, folder):
        sys.path.insert(0, str(Path(__file__).parent))
        from data_fixtures import write_idx_dataset

        write_idx_dataset(folder, n_train=6, n_test=2, gz=False)
        labels = folder / "train-labels-idx1-ubyte"
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels.read_bytes()))
        (folder / "train-labels-idx1-ubyte").unlink()
        return [("train-images-idx3-ubyte", "bytes"), ("train-images-idx3-ubyte", "idx"),
                ("train-labels-idx1-ubyte.gz", "bytes")]

    def load(self, folder):
        from vitlab.data._idx import read_idx_dataset
        from vitlab.data._sources import DATASETS

        info = dataclasses.replace(DATASETS["fashion_mnist"], checksums={})
        read_idx_dataset(folder, info, "train")


class Cifar(Reader):
    mutants_per_file = 20

    def build(self, folder):
        sys.path.insert(0, str(Path(__file__).parent))
        from data_fixtures import write_cifar10

        written, _ = write_cifar10(folder, per_batch=2)
        rel = written.relative_to(folder)
        return [(str(rel / "data_batch_1"), "pickle"), (str(rel / "batches.meta"), "pickle")]

    def load(self, folder):
        from vitlab.data._cifar import read_cifar
        from vitlab.data._sources import DATASETS

        info = dataclasses.replace(DATASETS["cifar10"], checksums={})
        read_cifar(folder / "cifar-10-batches-py", info, "train")


class ImageFolder(Reader):
    def build(self, folder):
        for k, name in enumerate(("cat", "dog")):
            (folder / name).mkdir(parents=True)
            (folder / name / "0.png").write_bytes(_png(k))
            (folder / name / "1.jpg").write_bytes(_jpeg(k))
        return [("cat/0.png", "bytes"), ("dog/1.jpg", "bytes"), ("cat/0.png", "special")]

    def load(self, folder):
        from vitlab.data._imagefolder import ImageFolderDataset, scan_image_folder

        samples, classes = scan_image_folder(folder)
        _read_all(ImageFolderDataset(samples, classes, crop=_crop()))


class Shards(Reader):
    def build(self, folder):
        import torch

        from vitlab.data.datasets import TensorImageDataset
        from vitlab.data.shards import write_shards

        images = torch.randint(0, 256, (6, 3, 10, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        data = TensorImageDataset(images, torch.arange(6) % 3, ["a", "b", "c"], "tiny", (0.5,) * 3, (0.5,) * 3)
        write_shards(data, folder / "set", shard_size=3, progress=False)
        return [("set/shard-000000.tar", "tar"), ("set/index.json", "json"), ("set/index.npz", "bytes"),
                ("set/index.npz", "npz")]

    def load(self, folder):
        from vitlab.data.shards import ShardDataset

        _read_all(ShardDataset.from_spec(str(folder / "set"), None, _crop()))


class SegShards(Reader):
    def build(self, folder):
        sys.path.insert(0, str(Path(__file__).parent))
        from data_fixtures import write_ade

        from vitlab.data._seg_shards import write_segmentation_shards
        from vitlab.data.segmentation import load_segmentation_dataset

        write_ade(folder / "src")
        source = load_segmentation_dataset("ade20k", "validation", data_dir=str(folder / "src"),
                                           crop=self._seg_crop())
        write_segmentation_shards(source, folder / "set", shard_size=2)
        shutil.rmtree(folder / "src")
        return [("set/shard-000000.tar", "tar"), ("set/index.json", "json")]

    @staticmethod
    def _seg_crop():
        from vitlab.data._seg_transform import SegCrop

        return SegCrop(size=8)

    def load(self, folder):
        from vitlab.data._seg_shards import SegmentationShardDataset

        _read_all(SegmentationShardDataset.from_folder(folder / "set", self._seg_crop()))


class CaptionShards(Reader):
    def build(self, folder):
        from vitlab.data.image_text import write_caption_shards

        pairs = [(_png(k), f"a photo number {k}") for k in range(4)]
        write_caption_shards(pairs, folder / "set", shard_size=4)
        return [("set/00000.tar", "tar"), ("set/00000.tar", "tar")]

    def load(self, folder):
        from vitlab.data.image_text import CaptionShardDataset

        _read_all(CaptionShardDataset(folder / "set", _tokenizer, _crop()))


class CaptionTable(Reader):
    mutants_per_file = 14

    def build(self, folder):
        for k in range(3):
            (folder / f"{k}.png").write_bytes(_png(k))
        rows = "".join(f"{k}.png\ta caption, number {k}\n" for k in range(3))
        (folder / "train.tsv").write_text("filepath\ttitle\n" + rows)
        quoted = "".join(f'{k}.png,"a caption, number {k}"\n' for k in range(3))
        (folder / "val.csv").write_text("filepath,title\n" + quoted)
        return [("train.tsv", "table"), ("val.csv", "table"), ("train.tsv", "special")]

    def load(self, folder):
        from vitlab.data.image_text import CsvImageTextDataset

        _read_all(CsvImageTextDataset(folder / "train.tsv", _tokenizer, _crop(), separator="\t"))
        _read_all(CsvImageTextDataset(folder / "val.csv", _tokenizer, _crop(), separator=","))


def _tiny_model():
    import torch

    import vitlab

    torch.manual_seed(0)
    return vitlab.create_model("vit_tiny_patch4_32", depth=1, num_classes=3)


class Safetensors(Reader):
    mutants_per_file = 30

    def build(self, folder):
        _tiny_model().save_pretrained(folder / "hf")
        return [("hf/model.safetensors", "safetensors")]

    def load(self, folder):
        import vitlab

        vitlab.from_pretrained(folder / "hf")


class HFConfig(Reader):
    mutants_per_file = 30

    def build(self, folder):
        from safetensors.torch import load_file, save_file

        _tiny_model().save_pretrained(folder / "hf")
        weights = folder / "hf" / "model.safetensors"
        save_file(load_file(str(weights)), str(weights))  # no metadata: config.json describes the model
        return [("hf/config.json", "json")]

    def load(self, folder):
        import vitlab

        vitlab.from_pretrained(folder / "hf")


class TokenCache(Reader):
    mutants_per_file = 10

    def build(self, folder):
        from vitlab.text.prepare import prepare_text

        (folder / "corpus.txt").write_text("to be or not to be, that is the question\n" * 40)
        prepared = prepare_text(f"textfile:{folder / 'corpus.txt'}", "char", cache_dir=folder / "cache",
                                progress=False)
        (folder / "root.txt").write_text(str(prepared.root.relative_to(folder)))
        rel = prepared.root.relative_to(folder)
        return [(str(rel / "train.bin"), "bytes"), (str(rel / "meta.json"), "json"),
                (str(rel / "vitlab_tokenizer.json"), "json"), (str(rel / "val.bin"), "bytes")]

    def load(self, folder):
        import numpy as np

        from vitlab.text.prepare import PreparedText

        prepared = PreparedText.load(folder / (folder / "root.txt").read_text())
        for split in prepared.splits:
            np.asarray(prepared.tokens(split)).max(initial=0)


READERS = {"idx": Idx, "cifar": Cifar, "imagefolder": ImageFolder, "shards": Shards, "seg_shards": SegShards,
           "caption_shards": CaptionShards, "caption_table": CaptionTable, "safetensors": Safetensors,
           "hf_config": HFConfig, "token_cache": TokenCache}


# ---------------------------------------------------------------------------------------------- format-aware mutants
def idx_field_mutants(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    for dims in ((2 ** 32 - 1, 28, 28), (0, 28, 28), (6, 2 ** 31, 2 ** 31), (6, 28)):
        header = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
        out.append((f"dims {dims}", header + data[16:]))
    out.append(("ndim 255", data[:3] + b"\xff" + data[4:]))
    out.append(("type float", data[:2] + b"\x0d" + data[3:]))
    return out


def pickle_field_mutants(data: bytes) -> list[tuple[str, bytes]]:
    """Huge length fields, deep nesting, a foreign global."""
    out = []
    at = data.find(b"T")  # the BINSTRING of the 3072-byte rows
    if at > 0:
        out.append(("BINSTRING length 2**31-1", data[:at + 1] + struct.pack("<i", 2 ** 31 - 1) + data[at + 5:]))
        out.append(("BINSTRING length -1", data[:at + 1] + struct.pack("<i", -1) + data[at + 5:]))
    out.append(("100000 nested lists", b"\x80\x02" + b"]" * 100_000 + b"."))
    out.append(("global os.system", b"\x80\x02cos\nsystem\nU\x04trueR."))
    out.append(("labels -> huge ints", data.replace(b"U\x06labels]", b"U\x06labels]J\xff\xff\xff\x7f", 1)))
    out.append(("labels -> strings", data.replace(b"U\x06labels](", b"U\x06labels](U\x01x", 1)))
    return out


def npz_mutants(path: Path) -> list[tuple[str, bytes]]:
    """index.npz rewritten with crafted offsets / sizes / labels / keys (the shard sizes still match)."""
    import io

    import numpy as np

    with np.load(path, allow_pickle=False) as table:
        arrays = {k: table[k] for k in table.files}
    out = []
    for name, value in (("offset", -512), ("offset", 2 ** 62), ("size", 2 ** 40), ("size", -1), ("label", 2 ** 62),
                        ("label", -5), ("shard", 7)):
        changed = dict(arrays)
        changed[name] = arrays[name].copy()
        changed[name][0] = value
        buffer = io.BytesIO()
        np.savez(buffer, **changed)
        out.append((f"npz {name}[0]={value}", buffer.getvalue()))
    for drop in ("key", "label"):
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v for k, v in arrays.items() if k != drop})
        out.append((f"npz without {drop}", buffer.getvalue()))
    return out


def safetensors_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Header length huge / small / negative, JSON header field edits (via json_mutants), data truncated."""
    size = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8:8 + size]), data[8 + size:]
    out = [("header length 2**62", struct.pack("<Q", 2 ** 62) + data[8:]),
           ("header length 3", struct.pack("<Q", 3) + data[8:]),
           ("header length -1", struct.pack("<q", -1) + data[8:]),
           ("data truncated", data[:8 + size + len(body) // 2])]
    from vitlab.models._hub import METADATA_KEY

    meta = json.loads(header["__metadata__"][METADATA_KEY])
    for kind, text in [("depth=10**9", {**meta, "kwargs": {**meta.get("kwargs", {}), "depth": 10 ** 9}}),
                       ("embed_dim=10**7", {**meta, "kwargs": {**meta.get("kwargs", {}), "embed_dim": 10 ** 7}}),
                       ("architecture=nope", {**meta, "architecture": "nope"})]:
        new = dict(header, __metadata__={**header["__metadata__"], METADATA_KEY: json.dumps(text)})
        raw = json.dumps(new).encode()
        out.append((f"metadata {kind}", struct.pack("<Q", len(raw)) + raw + body))
    for kind, raw in json_mutants(header, rng, n - len(out) - 6):
        out.append((f"header {kind}", struct.pack("<Q", len(raw)) + raw + body))
    return out + byte_mutants(data[:8 + size], rng, 6)


def special_mutants() -> list[tuple[str, object]]:
    """The file replaced by a link to /dev/zero, a FIFO, a folder, an empty file."""
    return [("-> /dev/zero", "devzero"), ("-> fifo", "fifo"), ("-> folder", "folder"), ("empty", b"")]


def table_mutants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    text = data.decode()
    lines = text.splitlines(keepends=True)
    separator = "\t" if "\t" in text else ","
    out = [("field of 200000 chars", (text + "0.png" + separator + "x" * 200_000 + "\n").encode()),
           ("invalid UTF-8", data + b"\xff\xfe.png\t\xc3\x28\n"),
           ("NUL byte", data.replace(b"caption", b"cap\x00tion", 1)),
           ("unclosed quote", data + b'"3.png\tnever closed\n'),
           ("header only", lines[0].encode()),
           ("row names a folder", data + b".\tthe folder\n"),
           ("row names a missing file", data + b"missing.png\tnothing\n")]
    return out + byte_mutants(data, rng, n - len(out))


def mutants(reader: Reader, folder: Path, files: list[tuple[str, str]], seed: int) -> list[tuple[str, str, object]]:
    rng = random.Random(seed)
    out = []
    for rel, how in files:
        data = (folder / rel).read_bytes()
        n = reader.mutants_per_file
        if how == "bytes":
            made = byte_mutants(data, rng, n)
        elif how == "idx":
            made = idx_field_mutants(data)
        elif how == "pickle":
            made = pickle_field_mutants(data) + byte_mutants(data, rng, n - 6)
        elif how == "json":
            made = json_mutants(json.loads(data), rng, n)
        elif how == "tar":
            made = tar_mutants(data, rng, n)
        elif how == "npz":
            made = npz_mutants(folder / rel)
        elif how == "safetensors":
            made = safetensors_mutants(data, rng, n)
        elif how == "table":
            made = table_mutants(data, rng, n)
        elif how == "special":
            made = special_mutants()
        else:
            raise ValueError(how)
        out += [(rel, kind, content) for kind, content in made]
    return out


def _place(target: Path, content) -> None:
    target.unlink()
    if content == "devzero":
        target.symlink_to("/dev/zero")
    elif content == "fifo":
        os.mkfifo(target)
    elif content == "folder":
        target.mkdir()
    else:
        target.write_bytes(content)


def _on_alarm(signum, frame):
    raise CaseTimeout(f"no result within {CASE_SECONDS} s")


def main(name: str, work: Path, start: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    reader = READERS[name]()
    valid = work / "valid"
    if not valid.exists():
        valid.mkdir(parents=True)
        files = reader.build(valid)
        (work / "files.json").write_text(json.dumps(files))
    files = json.loads((work / "files.json").read_text())
    cases = mutants(reader, valid, files, seed=23)
    signal.signal(signal.SIGALRM, _on_alarm)
    if start == 0:
        reader.load(valid)  # the valid set itself must load
        print(json.dumps({"case": -1, "total": len(cases)}), flush=True)
    for i in range(start, len(cases)):
        rel, kind, content = cases[i]
        folder = work / f"case{i:04d}"
        shutil.copytree(valid, folder, symlinks=True, copy_function=shutil.copy)
        _place(folder / rel, content)
        print(json.dumps({"case": i, "started": True}), flush=True)
        begin = time.perf_counter()
        signal.alarm(CASE_SECONDS)
        record = {"case": i, "kind": kind, "file": str(folder / rel)}
        try:
            reader.load(folder)
            signal.alarm(0)
            record.update(outcome="ok")
        except (Exception, CaseTimeout) as err:  # noqa: BLE001 - what the test judges
            signal.alarm(0)
            record.update(outcome="error", type=f"{type(err).__module__}.{type(err).__qualname__}",
                          message=str(err)[:3000], user_error=_user_error(err))
        record["seconds"] = round(time.perf_counter() - begin, 3)
        print(json.dumps(record), flush=True)
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _user_error(err: BaseException) -> bool:
    """True when the CLI prints `err` as a one-line user error (vitlab/_cli_errors.py) and it is not a resource
    failure (RecursionError is a RuntimeError, MemoryError and timeouts are never user errors)."""
    from vitlab._cli_errors import describe_error

    if isinstance(err, (MemoryError, RecursionError, CaseTimeout)):
        return False
    return describe_error(err) is not None


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
