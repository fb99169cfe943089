"""CI cannot go quietly green: with CI=true a skip for a missing required input (timm, transformers, the other dev
extras, ../shared/data, Debian's dataset-fashion-mnist) fails the run, a CUDA skip stays a skip, an unclassified skip
fails; outside CI they all skip with their reason. Tested on generated test files run by pytest in a subprocess with
this suite's conftest."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OPTIONAL_SKIPS, REQUIRED_SKIPS, skip_verdict

TESTS = Path(__file__).resolve().parent

CASES = {
    "test_timm.py": "import pytest\n\ndef test_timm_parity():\n    pytest.importorskip('timm.no_such_module')\n",
    "test_hf.py": "import pytest\n\ndef test_hf_parity():\n    pytest.importorskip('transformers.no_such_module')\n",
    "test_real_data.py": "import pytest\n\n@pytest.mark.skipif(True, reason='../shared/data/nothing is absent')\n"
                         "def test_real_data():\n    pass\n",
    "test_apt.py": "import pytest\n\n@pytest.mark.skipif(True, reason='dataset-fashion-mnist (apt) is not installed')\n"
                   "def test_debian_package():\n    pass\n",
    "test_collect.py": "import pytest\n\nsklearn = pytest.importorskip('sklearn.no_such_module')\n\n"
                       "def test_whole_module():\n    pass\n",
    "test_vague.py": "import pytest\n\ndef test_vague():\n    pytest.skip('not today')\n",
}
CUDA = ("test_cuda.py", "import pytest\n\n@pytest.mark.skipif(True, reason='needs CUDA')\ndef test_gpu():\n    pass\n"
        "\ndef test_cpu():\n    pass\n")


def _pytest(folder: Path, ci: bool, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def folder(tmp_path):
    for name in ("conftest.py", "torchvision_shim.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    for name, text in [*CASES.items(), CUDA]:
        (tmp_path / name).write_text(text)
    return tmp_path


def test_missing_required_inputs_fail_in_ci_and_skip_with_their_reason_outside(folder):
    files = [*sorted(CASES), CUDA[0]]
    ci = _pytest(folder, True, "-rA", "--continue-on-collection-errors", *files)
    assert ci.returncode == 1, ci.stdout
    for test in ("test_timm.py::test_timm_parity", "test_hf.py::test_hf_parity", "test_real_data.py::test_real_data",
                 "test_apt.py::test_debian_package", "test_vague.py::test_vague"):
        # a skipif skips at setup, so its failure is reported as an ERROR; either way the run fails
        assert re.search(rf"(FAILED|ERROR) {re.escape(test)} - CI=true: a", ci.stdout), (test, ci.stdout)
    assert re.search(r"ERROR test_collect.py - CI=true: a required input is missing", ci.stdout), ci.stdout
    assert "SKIPPED [1] test_cuda.py:3: needs CUDA" in ci.stdout and "PASSED test_cuda.py::test_cpu" in ci.stdout
    local = _pytest(folder, False, *files)
    assert local.returncode == 0 and "1 passed, 7 skipped" in local.stdout, local.stdout
    assert len(re.findall(r"SKIPPED \[\d+\] \S+: \S", local.stdout)) == 7, local.stdout  # -ra: each with its reason


def test_cuda_only_tests_still_skip_in_ci(folder):
    ci = _pytest(folder, True, CUDA[0])
    assert ci.returncode == 0 and "1 passed, 1 skipped" in ci.stdout and "needs CUDA" in ci.stdout, ci.stdout


def test_every_skip_reason_in_the_suite_is_classified():
    """Each skipif reason and importorskip in tests/ is either required (fails in CI) or optional with a stated
    reason; the CUDA and coreutils skips are the only optional ones."""
    reasons, modules = [], []
    for path in TESTS.glob("test_*.py"):
        text = path.read_text()
        reasons += re.findall(r"skipif\([^\n]*?\n?[^\n]*?reason=\"([^\"]+)\"", text)
        modules += re.findall(r"importorskip\(\"([\w.]+)\"", text)
    assert len(reasons) >= 10 and {"timm", "transformers"} <= {m.split(".")[0] for m in modules}
    for reason in reasons:
        required = any(re.search(p, reason) for p in REQUIRED_SKIPS)
        optional = any(re.search(p, reason) for p in OPTIONAL_SKIPS)
        assert required != optional, reason
    for module in modules:
        assert skip_verdict(f"could not import '{module}': No module named '{module}'") is not None, module
    assert all(OPTIONAL_SKIPS.values())


def test_ci_runs_the_readmes_test_command_with_the_slowest_tests_listed():
    """.ci/run installs and tests as the README's test command does, and adds --durations=25 so slow tests show."""
    readme = (TESTS.parent / "README.md").read_text()
    command = 'pip install -c constraints/cpu.txt -e ".[dev]" && python -m pytest -q'
    assert command in readme
    ci = (TESTS.parent / ".ci" / "run").read_text()
    assert 'pip install -q -c constraints/cpu.txt -e ".[dev]"' in ci
    assert re.search(r"^python3 -m pytest -q --durations=25$", ci, re.M)
    assert '"$status" -eq 5' in ci  # "no tests ran" is a failure
