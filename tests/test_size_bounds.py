"""Issue 23 points 5 and 6: sizes that no real model has (in a weight file's description, a config.json, or a
training config) are refused with one line naming the file or key, within a time and memory bound, before anything
is built or allocated; a 100 000-deep JSON description is an error naming the file, not a RecursionError."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import vitlab
from vitlab.models import create_segmentation_model

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 3 * 1024**3  # address space of the child: far below what any of the sizes below would allocate


def bounded(code: str, timeout: float = 60) -> str:
    """Runs `code` in a child Python limited to 3 GB of address space and `timeout` seconds; the child prints the
    error it caught as `TYPE: message` (message repr-free, so a multi-line one shows). Returns its stdout."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))
        sys.path.insert(0, {str(ROOT)!r})
        """)
    body = "try:\n" + textwrap.indent(textwrap.dedent(code), "    ") + (
        "\nexcept Exception as err:\n    print(f'{type(err).__name__}: {err}')\nelse:\n    print('LOADED')\n")
    done = subprocess.run([sys.executable, "-c", prelude + body], capture_output=True, text=True, timeout=timeout,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _rewrite_spec(weights: Path, edit) -> None:
    """Rewrites the vitlab description in `weights`' header through `edit(spec)` (the tensors unchanged)."""
    from safetensors.torch import load_file

    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    spec = json.loads(metadata["vitlab_model"])
    edit(spec)
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "vitlab_model": json.dumps(spec)})


@pytest.fixture
def saved(tmp_path) -> Path:
    vitlab.create_model("vit_tiny_patch4_32", depth=1, embed_dim=32, num_heads=2, num_classes=3).save_pretrained(
        tmp_path / "vit")
    return tmp_path / "vit"


@pytest.mark.parametrize("key, value, words", [
    ("depth", 10**9, ["depth=1000000000 blocks", "more than 1000"]),  # hangs building modules on a8c8966
    ("embed_dim", 10**5, ["parameters, more than 1e+11"]),  # allocates until the cap on a8c8966
    ("embed_dim", 30_000, ["does not fit", "shape mismatches"]),  # 10^10 parameters: 40 GB if built for real
])
def test_a_described_size_is_refused_before_it_is_built(saved, key, value, words):
    weights = saved / "model.safetensors"
    _rewrite_spec(weights, lambda spec: spec["kwargs"].update({key: value}))
    out = bounded(f"import vitlab; vitlab.create_model(checkpoint_path={str(weights)!r})")
    assert out.startswith("ValueError: " if "does not fit" not in words else "CheckpointMismatchError: ")
    assert str(weights) in out.splitlines()[0] and all(w in out for w in words)
    if "shape mismatches" not in words:
        assert len(out.splitlines()) == 1


def test_a_config_json_size_is_refused_before_it_is_built(saved):
    """The Hugging Face layout: the description in config.json beside weights without metadata."""
    from safetensors.torch import load_file

    weights = saved / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))  # no vitlab metadata: config.json describes the model
    config = json.loads((saved / "config.json").read_text())
    config["kwargs"]["depth"] = 10**9
    (saved / "config.json").write_text(json.dumps(config))
    out = bounded(f"import vitlab; vitlab.create_model(checkpoint_path={str(saved)!r})")
    assert out.startswith("ValueError: ") and len(out.splitlines()) == 1
    assert str(saved) in out and "depth=1000000000 blocks" in out


def test_a_segmentation_head_size_is_refused_before_it_is_built(tmp_path):
    create_segmentation_model("vit_tiny_patch4_32", 3, "upernet", head_kwargs=dict(channels=8, indices=(0, 1, 2, 3)),
                              depth=4, embed_dim=32, num_heads=2).save_pretrained(tmp_path / "seg")
    weights = tmp_path / "seg" / "model.safetensors"
    for channels in (10**7, 10**4):  # 10^7: 10^15 parameters; 10^4: 10^10 (40 GB), does not fit the file
        _rewrite_spec(weights, lambda spec: spec["segmentation"]["head_kwargs"].update(channels=channels))
        out = bounded(f"import vitlab; vitlab.create_model(checkpoint_path={str(weights)!r})")
        assert str(weights) in out.splitlines()[0], out
        if channels == 10**7:
            assert out.startswith("ValueError: ") and len(out.splitlines()) == 1 and "upernet head has" in out, out
        else:
            assert out.startswith("CheckpointMismatchError: ") and "shape mismatches" in out, out


def test_a_deep_json_description_is_an_error_naming_the_file(saved):
    weights = saved / "model.safetensors"
    from safetensors.torch import load_file

    save_file(load_file(str(weights)), str(weights), metadata={"vitlab_model": "[" * 100_000 + "]" * 100_000})
    out = bounded(f"import vitlab; vitlab.create_model(checkpoint_path={str(weights)!r})")
    assert out.startswith("ValueError: ") and len(out.splitlines()) == 1 and str(weights) in out
    save_file(load_file(str(weights)), str(weights))  # no metadata: the deep config.json is the description
    (saved / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    out = bounded(f"import vitlab; vitlab.create_model(checkpoint_path={str(saved)!r})")
    assert out.startswith("ValueError: ") and len(out.splitlines()) == 1 and "config.json" in out
    header = ('{"w":' + "[" * 100_000 + "]" * 100_000 + "}").encode()  # the safetensors header itself
    (saved / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    out = bounded(f"import vitlab; vitlab.create_model('vit_tiny_patch4_32', checkpoint_path={str(weights)!r})")
    assert out.startswith("ValueError: ") and len(out.splitlines()) == 1 and str(weights) in out


def test_a_deep_run_config_is_an_error_naming_it(tmp_path):
    """`vitlab eval RUN`: the run's config.json nested 100 000 deep."""
    run = tmp_path / "run"
    vitlab.create_model("vit_tiny_patch4_32", depth=1, embed_dim=32, num_heads=2).save_pretrained(run / "last")
    (run / "last" / "config.json").unlink()
    (run / "config.json").write_text("{\"config\": " + "[" * 100_000 + "]" * 100_000 + "}")
    weights = str(run / "last" / "model.safetensors")
    out = bounded(f"from vitlab.train import evaluate_checkpoint; evaluate_checkpoint({weights!r})")
    assert out.startswith("ValueError: ") and len(out.splitlines()) == 1 and str(run / "config.json") in out



FASHION = ROOT.parent / "shared" / "data" / "fashion-mnist"


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="../shared/data/fashion-mnist not present")
@pytest.mark.parametrize("preset, fields, words", [
    ("fashion_mnist_vit", {"model_kwargs": {"depth": 10**7}}, ["OverrideError", "'depth': 10000000", "more than 1000"]),
    ("fashion_mnist_vit", {"model_kwargs": {"img_size": 10**6}}, ["OverrideError", "'img_size': 1000000",
                                                                   "parameters, more than 1e+11"]),
    ("fashion_mnist_vit", {"image_size": 10**6}, ["OverrideError", "parameters, more than 1e+11"]),
    ("fashion_scenes_vit_linear", {"head": "upernet", "head_kwargs": {"channels": 10**7}},
     ["OverrideError", "head_kwargs={'channels': 10000000}", "parameters, more than 1e+11"]),
    ("fashion_mnist_vit", {"dataset": "nonexistent_ds"}, ["nonexistent_ds"]),
    ("fashion_mnist_vit", {"head": "linear"}, ["ValueError", "is not one"]),
])
def test_train_refuses_before_anything_is_created(tmp_path, preset, fields, words):
    """README: every config field is checked before anything is created. Each of these configs is refused with
    one line naming the key, and out_dir (no .lock, nothing) does not exist afterwards."""
    out_dir = tmp_path / "run"
    out = bounded(f"""
        from vitlab.train import get_preset, train
        config = get_preset({preset!r})
        for key, value in {fields!r}.items():
            setattr(config, key, value)
        config.data_dir, config.out_dir, config.progress = {str(FASHION)!r}, {str(out_dir)!r}, False
        train(config)""")
    assert len(out.splitlines()) == 1 and all(w in out for w in words), out
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []
