"""Test setup: the torchvision shim (tests/torchvision_shim.py) so that timm and transformers import; the library
itself never imports torchvision, timm or transformers.

Skips that CI may not take. The independent checks (parity with timm and Hugging Face, the real-data tests) skip
when their inputs are missing, which is right on a developer's machine (pytest -ra prints why) and wrong in CI,
where a missing input would turn the suite quietly green. So with `CI=true` in the environment:
- a skip for a REQUIRED input fails the test: a dev-extra package (`pip install -e ".[dev]"` installs them, so
  in CI their absence is a broken install), anything under ../shared/data, or Debian's dataset-fashion-mnist
  (.ci/run installs it);
- a skip for an OPTIONAL input stays a skip: CUDA (CPU machines have none) and coreutils' `timeout`;
- any other skip fails too, asking for its reason to be classified here (a new skip cannot pass CI unseen).
A skip reason must therefore name what is missing: pytest.importorskip does (“could not import 'timm'”), and
skipif markers say e.g. "../shared/data/fashion-mnist is absent"."""
import atexit
import os
import re
import shutil
import tempfile

import pytest
import torch

from torchvision_shim import import_torchvision

import_torchvision()

# The calibration cache (vitlab/_calibrate.py) of the whole suite is a temporary folder, never ~/.cache/vitlab, and
# precision=auto measures nothing (the flag rule) unless a test opts in with VITLAB_CALIBRATE=1: runs stay
# deterministic and fast. Set here, at import, so the environments that test modules copy from os.environ for
# their subprocesses (`python -m vitlab train ...`) carry them too.
_CALIBRATION_CACHE = tempfile.mkdtemp(prefix="vitlab-test-cache-")
atexit.register(shutil.rmtree, _CALIBRATION_CACHE, ignore_errors=True)
os.environ["VITLAB_CACHE"], os.environ["VITLAB_CALIBRATE"] = _CALIBRATION_CACHE, "0"

REQUIRED_MODULES = ("timm", "transformers", "tensorboard", "skimage", "sklearn", "simplejpeg", "open_clip")
REQUIRED_SKIPS = [rf"could not import '({'|'.join(REQUIRED_MODULES)})[.']", r"\.\./shared/data",
                  r"dataset-fashion-mnist"]
OPTIONAL_SKIPS = {r"needs CUDA": "CPU machines have no GPU; the GPU check (benchmarks/gpu_check.sh) runs them",
                  r"needs coreutils' timeout": "a POSIX tool the time-boxed GPU-check steps need, absent on some "
                                                "systems",
                  r"needs Linux with glibc": "mallopt tuning of glibc's allocator (vitlab.train.loop on the CPU)",
                  r"needs os\.mkfifo": "FIFOs are POSIX-only (a caption table naming one must not hang the reader)"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_verdict(reason: str) -> str | None:
    """None when the skip may stand in CI; else why it fails the run."""
    if any(re.search(pattern, reason) for pattern in REQUIRED_SKIPS):
        return f"CI=true: a required input is missing, so this test may not skip: {reason}"
    if any(re.search(pattern, reason) for pattern in OPTIONAL_SKIPS):
        return None
    return (f"CI=true: an unclassified skip ({reason!r}); name the missing input in the reason and list it as "
            "required or optional in tests/conftest.py")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_forbidden_skip(report) -> None:
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        if (why := skip_verdict(_skip_reason(report))) is not None:
            report.outcome, report.longrepr = "failed", why


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_forbidden_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Module-level importorskip skips a whole file at collection: the same rule applies."""
    outcome = yield
    _fail_forbidden_skip(outcome.get_result())


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
