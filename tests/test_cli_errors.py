"""`vitlab` errors a user hits: one `vitlab: error:` line and a nonzero exit, no traceback; `--debug` /
VITLAB_DEBUG=1 show it. Also: `--help` / `--version` without torch, images after options, a closed pipe."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitlab.cli import _parse, main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO, **kwargs)


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom vitlab.cli import build_parser, main\nbuild_parser().format_help()\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "import vitlab\nprint('torch' in sys.modules, vitlab.__version__)")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["vitlab", "0.1.0", "False", "0.1.0"]  # --version printed, torch untouched
    lazy = _python("import vitlab, sys; m = vitlab.create_model('vit_tiny_patch4_32'); print('torch' in sys.modules, "
                   "type(m).__name__, 'create_model' in dir(vitlab))")
    assert lazy.stdout.split() == ["True", "VisionTransformer", "True"], lazy.stderr


def test_user_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("VITLAB_DEBUG", raising=False)
    assert main(["profile", "crate_alpha_b61"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlab: error: unknown model 'crate_alpha_b61'") and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown model"):
        main(["--debug", "profile", "crate_alpha_b61"])
    monkeypatch.setenv("VITLAB_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown model"):
        main(["profile", "crate_alpha_b61"])


def test_subprocess_error_has_no_traceback_and_debug_has_one():
    plain = subprocess.run([sys.executable, "-m", "vitlab", "check-data", "no_such_data"], capture_output=True,
                           text=True, env={**ENV, "VITLAB_DEBUG": ""}, cwd=REPO)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("vitlab: error: unknown dataset 'no_such_data'")
    debug = subprocess.run([sys.executable, "-m", "vitlab", "--debug", "check-data", "no_such_data"],
                           capture_output=True, text=True, env=ENV, cwd=REPO)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UnknownDatasetError" in debug.stderr


def test_unknown_dataset_lists_every_kind(capsys):
    assert main(["train", "fashion_mnist_vit", "dataset=fashon_mnist", "steps=1"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean: fashion_mnist" in err
    for name in ("cifar10", "imagenet", "shards", "tinyshakespeare", "wikitext2", "wikitext103", "openwebtext",
                 "textfile:PATH", "fashion_mnist_scenes", "ade20k", "ade20k_shards", "fashion_mnist_captions",
                 "image_text:ROOT"):
        assert name in err, name


def test_cuda_without_cuda_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, on any machine
    assert main(["profile", "vit_tiny_patch4_32", "--device", "cuda", "--iters", "1"]) == 2
    assert "device=cuda needs a CUDA GPU" in capsys.readouterr().err
    assert main(["train", "fashion_mnist_vit", "device=cuda", "steps=1"]) == 2
    assert "use device=cpu" in capsys.readouterr().err
    from vitlab._cli_errors import describe_error

    # torch's own failure deep inside (e.g. `vitlab eval` of a run trained on a GPU), as a CPU-only build raises it
    for err in (AssertionError("Torch not compiled with CUDA enabled"),
                RuntimeError("CUDA driver initialization failed, you might not have a CUDA gpu.")):
        message, code = describe_error(err)
        assert code == 2 and "asks for a CUDA device" in message and "device=cpu" in message, err


def test_failed_download_names_the_url_and_where_to_put_the_file(tmp_path, capsys):
    from vitlab._cli_errors import describe_error
    from vitlab._download import DownloadError, download

    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: connection refused, no network needed
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "data" / "cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a", timeout=5)
    message, code = describe_error(info.value)
    assert code == 2 and url in message and str(tmp_path / "data" / "cifar-10-python.tar.gz") in message
    assert "machine that has it" in message and "md5 c58f30108f718f92721af3b95e74349a" in message


def test_map_commands_refuse_a_language_model(tmp_path, capsys):
    weights = tmp_path / "gpt.safetensors"
    weights.write_bytes(b"")  # refused before it is read
    for argv in (["attention", str(weights), "--model", "gpt_char_tiny", "a.png"],
                 ["plot-weights", str(weights), "--model", "gpt_char_tiny"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is a language model" in err and "for image models" in err and "vitlab generate" in err


def test_images_may_follow_the_options():
    args = _parse(["attention", "w.pth", "--model", "vit_tiny_patch4_32", "photo.jpg", "two.png", "--out", "o"])
    assert (args.checkpoint, args.images, args.model, args.out) == ("w.pth", ["photo.jpg", "two.png"],
                                                                     "vit_tiny_patch4_32", "o")
    args = _parse(["segment", "w.pth", "a.png", "--model", "m", "b.png"])
    assert args.images == ["a.png", "b.png"]
    with pytest.raises(SystemExit):
        _parse(["attention", "w.pth", "--model", "m", "a.png", "--no-such-option"])
    with pytest.raises(SystemExit):
        _parse(["models", "x", "y"])  # other commands keep argparse's check


def test_closed_pipe_exits_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "vitlab", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def _nanogpt_ckpt(path: Path, vocab_size: int) -> dict:
    from vitlab import create_model

    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False, vocab_size=vocab_size, dropout=0.0)
    torch.manual_seed(0)
    model = create_model("gpt2", activation="gelu", **{k: v for k, v in args.items() if k != "dropout"})
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # as nanoGPT saves a compiled model
    torch.save({"model": state, "model_args": args, "iter_num": 10, "best_val_loss": torch.tensor(3.0),
                "config": {"dataset": "openwebtext", "compile": True}}, path)
    return model.state_dict()


def test_generate_from_a_nanogpt_checkpoint(tmp_path, monkeypatch, capsys):
    from test_text import write_gpt2_files

    from vitlab.train.generate import load_language_model, load_nanogpt_checkpoint

    monkeypatch.setenv("VITLAB_GPT2_BPE", str(write_gpt2_files(tmp_path / "gpt2")))
    saved = _nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=50304)  # nanoGPT's padded GPT-2 vocabulary
    model, tokenizer, _ = load_language_model(tmp_path)  # the out_dir holding ckpt.pt
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert main(["generate", str(tmp_path / "ckpt.pt"), "--prompt", "the cat", "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the cat") and len(out) > len("the cat")  # padding ids are never sampled (decode works)
    char = _nanogpt_ckpt(tmp_path / "char.pt", vocab_size=65)  # shakespeare_char: its tokenizer is in meta.pkl
    assert main(["generate", str(tmp_path / "char.pt")]) == 2
    assert "meta.pkl" in capsys.readouterr().err
    model, entries = load_nanogpt_checkpoint(tmp_path / "char.pt")  # the weights themselves load (e.g. to evaluate)
    assert model.vocab_size == 65 and all(torch.equal(model.state_dict()[k], v) for k, v in char.items())
    assert entries["iter_num"] == 10 and entries["model_args"]["n_embd"] == 16 and "model" not in entries
