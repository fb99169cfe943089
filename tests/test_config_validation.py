"""TrainConfig.validate(): every field is checked when the config is made (apply_overrides, train), before a run
directory exists, and the error names the key, the value and the valid range."""
import dataclasses
import math
import subprocess
import sys

import pytest

from vitlab import create_model
from vitlab.train import OverrideError, TrainConfig, apply_overrides, get_preset, list_presets, train

# (override, the same value as a Python object, words the message must hold: the key and the valid range)
BAD = [
    ("epochs=0", 0.0, ["epochs=0.0", "finite number > 0"]),
    ("epochs=-2", -2.0, ["epochs=-2.0", "finite number > 0"]),
    ("epochs=inf", math.inf, ["epochs=inf", "finite number > 0"]),
    ("epochs=nan", math.nan, ["epochs=nan", "finite number > 0"]),
    ("steps=-5", -5, ["steps=-5", "int >= 0"]),
    ("train_subset=-5", -5, ["train_subset=-5", "int >= 0"]),
    ("eval_subset=-1", -1, ["eval_subset=-1", "int >= 0"]),
    ("eval_batches=-1", -1, ["eval_batches=-1", "int >= 0"]),
    ("eval_batches=20", 20, ["eval_batches=20", "text datasets", "'fashion_mnist'"]),
    ("min_lr=0.1", 0.1, ["min_lr=0.1", "[0, lr=0.002]"]),
    ("min_lr=-0.001", -0.001, ["min_lr=-0.001", ">= 0"]),
    ("weight_decay=-0.1", -0.1, ["weight_decay=-0.1", ">= 0"]),
    ("warmup_epochs=-1", -1.0, ["warmup_epochs=-1.0", ">= 0"]),
    ("warmup_epochs=5", 5.0, ["warmup_epochs=5.0", "[0, epochs=4"]),
    ("grad_clip=-1", -1.0, ["grad_clip=-1.0", ">= 0"]),
    ("model_kwargs.depth=0", 0, ["model_kwargs=", "'depth': 0", "depth must be an int >= 1"]),
    ("model_kwargs.num_heads=0", 0, ["'num_heads': 0", "num_heads must be an int >= 1"]),
    ("model_kwargs.no_such_arg=1", 1, ["'no_such_arg': 1", "unexpected keyword argument 'no_such_arg'"]),
    ("model=vit_nope", "vit_nope", ["model='vit_nope'", "unknown model 'vit_nope'"]),
    ("distributed=zero3", "zero3", ["distributed='zero3'", "'ddp', 'fsdp'"]),
    ("optimizer=sgd", "sgd", ["optimizer='sgd'", "'adamw', 'adam', 'lion'"]),
    ("schedule=linear", "linear", ["schedule='linear'", "'cosine', 'piecewise'"]),
    ("precision=fp16", "fp16", ["precision='fp16'", "'auto', 'fp32', 'bf16'"]),
    ("init=xavier", "xavier", ["init='xavier'", "None, 'mimetic', 'norm_matched'"]),
    ("init_kwargs.alpha_qk=0.5", 0.5, ["init_kwargs=", "must be empty without an init"]),
    ("device=tpu", "tpu", ["device='tpu'", "'cuda:N'"]),
    ("device=cuda:x", "cuda:x", ["device='cuda:x'", "'cuda:N'"]),
    ("data_errors=ignore", "ignore", ["data_errors='ignore'", "'raise', 'skip'"]),
    ("tokenizer=word", "word", ["tokenizer='word'", "'bpe:N'"]),
    ("tokenizer=bpe:10", "bpe:10", ["tokenizer='bpe:10'", "N >= 257"]),
    ("eval_every=0", 0.0, ["eval_every=0.0", "finite number > 0"]),
    ("num_workers=-1", -1, ["num_workers=-1", "int >= 0"]),
    ("lr=0", 0.0, ["lr=0.0", "finite number > 0"]),
    ("lr=-1e-3", -1e-3, ["lr=-0.001", "finite number > 0"]),
    ("log_every=0", 0, ["log_every=0", "int >= 1"]),
    ("grad_accum_steps=0", 0, ["grad_accum_steps=0", "int >= 1"]),
    ("grad_accum_steps=3", 3, ["grad_accum_steps=3", "divide batch_size=64"]),
    ("batch_size=0", 0, ["batch_size=0", "int >= 1"]),
    ("block_size=0", 0, ["block_size=0", "int >= 1"]),
    ("betas=(0.9, 0.95, 0.99)", (0.9, 0.95, 0.99), ["betas=(0.9, 0.95, 0.99)", "two numbers", "[0, 1)"]),
    ("betas=(0.9, 1.0)", (0.9, 1.0), ["betas=(0.9, 1.0)", "[0, 1)"]),
    ("crop_pct=0", 0.0, ["crop_pct=0.0", "(0, 1]"]),
    ("crop_pct=1.5", 1.5, ["crop_pct=1.5", "(0, 1]"]),
    ("shuffle_buffer=-1", -1, ["shuffle_buffer=-1", "int >= 0"]),
    ("eval_interval=-1", -1, ["eval_interval=-1", "int >= 0"]),
    ("warmup_steps=-1", -1, ["warmup_steps=-1", "int >= 0"]),
    ("max_steps=-1", -1, ["max_steps=-1", "int >= 0"]),
    ("peak_tflops=-1", -1.0, ["peak_tflops=-1.0", ">= 0"]),
    ("seed=-1", -1, ["seed=-1", "int >= 0"]),
    ("image_size=0", 0, ["image_size=0", "int >= 1"]),
    ("out_dir=", "", ["out_dir=''", "non-empty"]),
    ("out_dir=runs/{name}", "runs/{name}", ["out_dir='runs/{name}'", "{preset}"]),
    ("augment.mix_prob=2", 2.0, ["mix_prob", "[0.0, 1.0]"]),
]
IDS = [override for override, _, _ in BAD]


def _assert_names(err: pytest.ExceptionInfo, words: list[str]) -> None:
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def _set(config: TrainConfig, override: str, value) -> None:
    """The override applied directly (no apply_overrides): what a script or preset can do."""
    key = override.partition("=")[0]
    head, _, rest = key.partition(".")
    if head in ("model_kwargs", "init_kwargs"):
        getattr(config, head)[rest] = value
    elif head == "augment":
        setattr(config.augment, rest, value)
    else:
        setattr(config, key, value)


@pytest.mark.parametrize("override, value, words", BAD, ids=IDS)
def test_apply_overrides_rejects_with_key_and_range(override, value, words):
    with pytest.raises(OverrideError) as err:
        apply_overrides(get_preset("fashion_mnist_vit"), [override])
    _assert_names(err, words)


@pytest.mark.parametrize("override, value, words", BAD, ids=IDS)
def test_train_rejects_before_making_the_run_directory(override, value, words, tmp_path):
    config = get_preset("fashion_mnist_vit")
    config.out_dir = str(tmp_path / "run")
    _set(config, override, value)
    with pytest.raises(OverrideError) as err:
        train(config, preset="fashion_mnist_vit")
    _assert_names(err, words)
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["batch_size", "epochs", "log_every", "train_subset"])
def test_a_bool_is_not_a_number(key):
    with pytest.raises(OverrideError, match=f"{key}=True: must be"):
        TrainConfig(**{key: True})


def test_the_constructor_and_replace_validate():
    with pytest.raises(OverrideError, match=r"epochs=-2: must be a finite number > 0"):
        TrainConfig(epochs=-2)
    with pytest.raises(OverrideError, match=r"lr=0: must be a finite number > 0"):
        dataclasses.replace(TrainConfig(), lr=0)
    with pytest.raises(OverrideError, match=r"min_lr=0.5: must be a finite number in \[0, lr=0.1\]"):
        TrainConfig(lr=0.1, min_lr=0.5)


def test_valid_edge_values_pass():
    config = apply_overrides(get_preset("fashion_mnist_vit"),
                             ["min_lr=0.002", "crop_pct=1", "betas=(0, 0.5)", "device=cuda:1",
                              "tokenizer=bpe:300", "steps=10", "warmup_steps=10", "warmup_epochs=100", "seed=0",
                              "grad_accum_steps=4", "out_dir=runs/{preset}-b", "init=mimetic",
                              "init_kwargs.alpha_qk=0.5", "model_kwargs.depth=1", "image_size=28", "progress=none"])
    assert config.model_kwargs["depth"] == 1 and config.init_kwargs == {"alpha_qk": 0.5}


def test_init_kwargs_keys_are_checked_against_the_init():
    with pytest.raises(OverrideError, match=r"unknown key\(s\) \['alpha'\] for init='mimetic'; valid: .*alpha_qk"):
        apply_overrides(get_preset("fashion_mnist_vit"), ["init=mimetic", "init_kwargs.alpha=0.5"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_valid_devices_pass(device):
    assert apply_overrides(get_preset("fashion_mnist_vit"), [f"device={device}"]).device == device


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates(name):
    config = get_preset(name)
    config.validate()
    assert apply_overrides(config, []) == config


@pytest.mark.parametrize("model, kwargs, message", [
    ("vit_tiny_patch4_32", dict(depth=0), "depth must be an int >= 1, got 0"),
    ("crate_tiny_patch4_32", dict(depth=-1), "depth must be an int >= 1, got -1"),
    ("crate_alpha_tiny_patch4_32", dict(embed_dim=0), "embed_dim must be an int >= 1, got 0"),
    ("vit_tiny_patch4_32", dict(num_classes=-1), "num_classes must be an int >= 0, got -1"),
    ("vit_tiny_patch4_32", dict(img_size=0), "img_size must be an int >= 1, got 0"),
    ("gpt_char_tiny", dict(n_layer=0), "n_layer must be an int >= 1, got 0"),
    ("gpt_char_tiny", dict(n_head=0), "n_head must be an int >= 1, got 0"),
    ("gpt_char_tiny", dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
])
def test_model_constructors_reject_empty_shapes(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(model, **kwargs)


def test_cli_exits_2_with_the_message_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vitlab", "train", "fashion_mnist_vit", "epochs=-2"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "epochs=-2.0: must be a finite number > 0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # no runs/ directory
