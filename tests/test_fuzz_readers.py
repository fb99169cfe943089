"""Issue 23: every reader, fed a few hundred mutated files (tests/fuzz_readers.py), either loads them (and reads
every sample) or fails with a one-line user error naming the file (the mutated one, or the file of the same set
that it points to: a shard, an image, the folder), within a time and memory bound: no MemoryError,
RecursionError, hang, crash or traceback-only exception type.

Each reader's mutants run in one subprocess capped at fuzz_readers.MEMORY_LIMIT bytes of address space, each case
under a CASE_SECONDS alarm; a subprocess that dies (a crash, or a hang the alarm cannot interrupt) is recorded as a
failure of the case it was running and restarted after it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_readers import CASE_SECONDS, READERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "fuzz_readers.py"


def _run(reader: str, work: Path) -> tuple[list[dict], int]:
    records, start, total = [], 0, None
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    while total is None or start < total:
        running = None
        try:
            proc = subprocess.run([sys.executable, str(HELPER), reader, str(work), str(start)], capture_output=True,
                                  text=True, env=env, timeout=CASE_SECONDS * 3 + 240)
            output, stderr, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            output, stderr, code = (err.stdout or b"").decode(), (err.stderr or b"").decode(), "timeout"
        for line in output.splitlines():
            record = json.loads(line)
            if record["case"] == -1:
                total = record["total"]
            elif record.get("started"):
                running = record["case"]
            else:
                records.append(record)
                running = None
        if total is None:
            raise AssertionError(f"{reader}: the valid files did not load (exit {code}):\n{stderr[-3000:]}")
        if running is None:
            break
        records.append({"case": running, "kind": "?", "file": "?", "outcome": "crash",
                        "type": f"exit {code}", "message": stderr.strip().splitlines()[-1:] or [""]})
        start = running + 1
    return records, total


def _problem(record: dict) -> str | None:
    if record["outcome"] == "ok":
        return None
    if record["outcome"] == "crash":
        return f"subprocess died ({record['type']}): {record['message']}"
    message, path = record["message"], Path(record["file"])
    if not record["user_error"]:
        return f"{record['type']} is not a one-line user error: {message[:300]}"
    if "\n" in message and record["type"] != "vitlab.models.weights.CheckpointMismatchError":
        # the mismatch report lists each key that differs under a first line naming the file, by design
        return f"{record['type']}: message of {message.count(chr(10)) + 1} lines: {message[:300]}"
    if len(message) > 2000:
        return f"{record['type']}: a {len(message)}-character message"
    case_folder = next(p for p in path.parents if p.name.startswith("case"))
    if str(case_folder) not in message:  # the mutated file, or the image / shard / folder of the set it points to
        return f"{record['type']}: message names no file: {message[:300]}"
    return None


@pytest.mark.parametrize("reader", sorted(READERS))
def test_mutated_files_load_or_fail_with_one_line_error_naming_the_file(reader, tmp_path):
    records, total = _run(reader, tmp_path)
    assert len(records) == total
    failures = [f"case {r['case']} {r['kind']} ({Path(r['file']).name}): {problem}" for r in records
                if (problem := _problem(r))]
    assert not failures, f"{reader}: {len(failures)} of {total} mutants:\n" + "\n".join(failures)
