#!/usr/bin/env bash
# One GPU check of vitlab, for a short lease of a GPU machine: every step under its own `timeout`, inside one overall
# time budget, each step's exit status and wall time recorded in $OUT/gpu_check.json (valid JSON after every step,
# whatever fails or times out). Steps, most valuable first:
#   environment         nvidia-smi, torch / CUDA versions, device, CPUs, git commit, date, which packages import
#   gpu_tests           python -m pytest -q -m gpu (pass / fail / skip counts)
#   train_step          benchmarks/train_step.py: ViT-B/16, CRATE-α-B/16, timm ViT-B/16; images/s, MFU, memory
#   decode_throughput   benchmarks/decode_throughput.py --cores 16 (skipped while the script does not exist)
#   fashion_recipe      the cifar10_vit_tiny_mimetic recipe on Fashion-MNIST at 32 px, 2 epochs: top-1, images/s, MFU
#   grad_checkpointing  benchmarks/grad_checkpointing.py (skipped while the script does not exist)
#   sliding_window      benchmarks/sliding_window.py: ADE20K slide evaluation, batched windows vs mmseg's loop, bf16
#   train_step_compile  train_step.py --compile (last: compilation is the slowest and least certain step)
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine, from the repository root
#   DRY_RUN=1 OUT=/tmp/gpucheck bash benchmarks/gpu_check.sh   # on a CPU: the same commands at tiny sizes
#   bash benchmarks/gpu_check.sh --prepare                # here, before a lease: wheels + data to carry
#
# Environment: OUT (default docs/gpu), DRY_RUN (0/1), GPU_CHECK_BUDGET_S (overall; default 480 s, dry run 900 s),
# GPU_CHECK_STEPS (space-separated subset of the step names), FASHION_DIR, PYTHON (default python3),
# GIT_COMMIT (recorded when the copy has no .git), GPU_CHECK_SCRATCH (run folders and checkpoints; not under OUT).
# At most 7 files are written under OUT (the device tool brings back 8): gpu_check.json, gpu_check.log,
# train_step.json, train_step_compile.json, decode_throughput.json, fashion_metrics.jsonl, grad_checkpointing.json
# (sliding_window's results go into gpu_check.json only: its JSON is written to the scratch folder).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
CARRY_DATA=.gpu_data  # ignored folder (.git/info/exclude) that travels with `carry`

prepare() {  # here, with a package registry: what the GPU machine lacks (see benchmarks/README.md)
    grep -qxF "/$CARRY_DATA/" .git/info/exclude 2>/dev/null || echo "/$CARRY_DATA/" >> .git/info/exclude
    grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || git check-ignore -q .whl/x || echo "/.whl/" >> .git/info/exclude
    local src=${FASHION_DIR:-../shared/data/fashion-mnist}
    mkdir -p "$CARRY_DATA/fashion-mnist" .whl
    cp -u "$src"/*-ubyte* "$CARRY_DATA/fashion-mnist" || { echo "no Fashion-MNIST in $src, set FASHION_DIR"; return 1; }
    # missing from the GPU image (Python 3.12): kornia (the engine's device augmentation), and simplejpeg +
    # webdataset for decode_throughput.py; one version of each (two stop the install)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0 \
        simplejpeg==1.9.0 webdataset==1.0.2 braceexpand==0.1.7 || return 1
    du -sh "$CARRY_DATA" .whl
    echo "carry: [\".whl\", \"$CARRY_DATA\"]"
}
if [[ "${1:-}" == "--prepare" ]]; then prepare; exit $?; fi

DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-docs/gpu}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
if [[ -n "${GPU_CHECK_SCRATCH:-}" ]]; then
    SCRATCH=$GPU_CHECK_SCRATCH  # kept: the fashion run's folder with its checkpoints is in it
else
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
    trap 'rm -rf "$SCRATCH"' EXIT
fi
mkdir -p "$SCRATCH"
BUDGET_S=${GPU_CHECK_BUDGET_S:-$([[ "$DRY_RUN" == 1 ]] && echo 900 || echo 480)}  # the CPU dry run compiles slowly
RESERVE_S=10   # kept back for the summary
MIN_STEP_S=15  # a step is not started with less than this left
ALL_STEPS="environment gpu_tests train_step decode_throughput fashion_recipe"
ALL_STEPS+=" grad_checkpointing sliding_window train_step_compile"
STEPS=${GPU_CHECK_STEPS:-$ALL_STEPS}
LOG=$OUT/gpu_check.log
START=$(date +%s)
export PYTHONUNBUFFERED=1 GPU_CHECK_OUT=$OUT GPU_CHECK_SCRATCH=$SCRATCH GPU_CHECK_DRY_RUN=$DRY_RUN
export GPU_CHECK_BUDGET_S=$BUDGET_S GPU_CHECK_STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's vitlab, installed or not
: > "$LOG"
: > "$SCRATCH/steps.jsonl"
rm -f "$OUT"/{train_step,train_step_compile,decode_throughput,grad_checkpointing}.json "$OUT/fashion_metrics.jsonl"
rm -f "$SCRATCH/sliding_window.json"

# The one difference between the dry run and the real run: sizes (and the device).
if [[ "$DRY_RUN" == 1 ]]; then
    DEVICE=cpu
    TRAIN_STEP_SIZE=(--tiny --batch-size 8 --steps 2 --warmup 1 --repeats 2)
    COMPILE_SIZE=(--tiny --batch-size 8 --steps 2 --warmup 2 --repeats 2)
    DECODE_SIZE=(--images 16 --repeats 1 --cores 2)
    DECODE_CAP=240  # its pipelines are processes that import torch and timm: slow on a loaded 2-core machine
    FASHION_SIZE=(train_subset=256 eval_subset=128 batch_size=32 model_kwargs.depth=1 model_kwargs.patch_size=8)
    GC_SIZE=(--models vit_tiny_patch4_32:2 crate_alpha_tiny_patch4_32:2 gpt_char_tiny:1:32 --steps 1)
    SW_SIZE=(--models vit_tiny_patch16_224:linear --dtypes fp32 --size 128x160 --crop 64 --stride 43 --images 1)
else
    DEVICE=cuda
    TRAIN_STEP_SIZE=(--batch-size "${TRAIN_STEP_BATCH:-128}" --steps 20 --warmup 5 --repeats 5)
    COMPILE_SIZE=(--batch-size "${TRAIN_STEP_BATCH:-128}" --steps 20 --warmup 3 --repeats 5)
    DECODE_SIZE=(--images 300 --repeats 3 --cores 16)
    DECODE_CAP=120
    FASHION_SIZE=()
    GC_SIZE=(--models vit_base_patch16_224:64 crate_alpha_base_patch16_224:64 gpt2:16:1024 --steps 3)
    SW_SIZE=(--models crate_alpha_base_patch16_224:upernet:512 vit_base_patch16_224:linear --dtypes bf16 --images 8
        --repeats 3)  # ADE20K's 512x683 image, crop 512, stride 341, 150 classes (the script's defaults)
fi

read -r -d '' HELPER <<'PYEOF'
import json, os, re, statistics, subprocess, sys, time
from pathlib import Path

out, scratch = Path(os.environ["GPU_CHECK_OUT"]), Path(os.environ["GPU_CHECK_SCRATCH"])

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return {"unreadable": f"{path}: {err}"}

def environment(path):
    env = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
           "dry_run": os.environ.get("GPU_CHECK_DRY_RUN") == "1", "setup": os.environ.get("GPU_CHECK_SETUP") or None}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                             capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as err:
        env["nvidia_smi"] = f"unavailable: {err}"
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        env["git_commit"] = git.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
        env["git_modified_files"] = len(dirty.stdout.splitlines()) if git.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    env["git_commit"] = env["git_commit"] or os.environ.get("GIT_COMMIT") or None
    import torch
    env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, device_count=torch.cuda.device_count(),
                   device_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    packages = {}
    try:  # timm imports torchvision: through the tests' shim where the CPU torch has no matching build
        sys.path.insert(0, "tests")
        from torchvision_shim import import_torchvision
        import_torchvision()
    except Exception as err:
        packages["torchvision"] = f"missing: {type(err).__name__}: {err}"[:200]
    for name in ("vitlab", "torchvision", "timm", "kornia", "kornia_rs", "safetensors", "numpy", "tokenizers"):
        try:
            packages.setdefault(name, getattr(__import__(name), "__version__", "installed"))
        except Exception as err:
            packages[name] = f"missing: {type(err).__name__}: {err}"[:200]
    env["packages"] = packages
    Path(path).write_text(json.dumps(env, indent=1))
    print(json.dumps(env, indent=1))

def pytest_counts(log):
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    words = r"(passed|failed|skipped|deselected|errors?|xfailed|xpassed)"
    lines = [l for l in text.splitlines() if re.search(rf"\b{words}\b|no tests ran", l)]
    counts = {}
    for number, word in re.findall(rf"(\d+) {words}", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] = int(number)
    return {"counts": counts, "summary_line": lines[-1].strip("= ") if lines else None}

def train_step(path):
    report = load(path)
    if "models" not in report:
        return report
    keep = ("status", "reason", "images_per_s", "step_ms", "mfu", "achieved_tflops", "peak_memory_mib", "dtype",
            "params", "train_flops_per_image", "grad_checkpointing", "warmup_s")
    return {"device_name": report.get("device_name"), "batch_size": report.get("batch_size"),
            "compile": report.get("compile"), "interrupted": report.get("interrupted"), "ratios": report.get("ratios"),
            "models": {n: {k: r[k] for k in keep if k in r} for n, r in report["models"].items()}}

def fashion(path):
    records = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()] if Path(path).is_file() else []
    evals = [r for r in records if "top1" in r]
    train = [r for r in records if "images_per_s" in r]
    mfu = [r["mfu"] for r in train if r.get("mfu") is not None]
    last = records[-1] if records else {}
    return {"final_top1": evals[-1]["top1"] if evals else None,
            "best_top1": max((r["top1"] for r in evals), default=None),
            "final_top5": evals[-1].get("top5") if evals else None, "epochs": last.get("epoch"),
            "steps": last.get("step"), "run_elapsed_s": last.get("elapsed_s"),
            "train_images_per_s_median": round(statistics.median(r["images_per_s"] for r in train), 1) if train
            else None,
            "train_images_per_s_last": round(train[-1]["images_per_s"], 1) if train else None,
            "mfu_median": round(statistics.median(mfu), 4) if mfu else None}

def record(name, status, rc, wall, timeout, reason, command, *files):
    step = {"name": name, "status": status, "exit_code": None if rc == "" else int(rc),
            "wall_s": float(wall) if wall else 0.0, "timeout_s": int(timeout) if timeout else None,
            "reason": reason or None, "command": command.strip() or None}
    if status != "skipped":
        try:
            if name == "environment":
                step["result"] = load(scratch / "environment.json")
            elif name == "gpu_tests":
                step["result"] = pytest_counts(scratch / "gpu_tests.log")
            elif name.startswith("train_step"):
                step["result"] = train_step(out / f"{name}.json")
            elif name == "fashion_recipe":  # the run's folder (checkpoints) stays in scratch; its log comes out
                metrics = scratch / "fashion_cifar_recipe" / "metrics.jsonl"
                if metrics.is_file():
                    (out / "fashion_metrics.jsonl").write_bytes(metrics.read_bytes())
                step["result"] = fashion(metrics)
            elif (out / f"{name}.json").is_file():
                step["result"] = load(out / f"{name}.json")
            elif (scratch / f"{name}.json").is_file():  # a result kept out of OUT (at most 7 files there)
                step["result"] = load(scratch / f"{name}.json")
        except Exception as err:  # a result that cannot be read must not lose the step's record
            step["result_error"] = f"{type(err).__name__}: {err}"
    step["files"] = [f for f in files if (out / f).is_file()]
    with open(scratch / "steps.jsonl", "a") as f:
        f.write(json.dumps(step) + "\n")
    summary("false")
    print(f"[{status}] {name} {step['wall_s']:.1f}s rc={rc or '-'}" + (f" ({reason})" if reason else ""))
    if step.get("result") and name != "environment":
        print("    " + json.dumps(step["result"])[:1500])

def summary(complete):
    steps = [json.loads(l) for l in (scratch / "steps.jsonl").read_text().splitlines() if l.strip()]
    env = next((s.get("result") for s in steps if s["name"] == "environment"), None)
    data = {"gpu_check": 1, "mode": "dry_run" if os.environ.get("GPU_CHECK_DRY_RUN") == "1" else "gpu",
            "complete": complete == "true", "started": os.environ.get("GPU_CHECK_STARTED"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": int(os.environ["GPU_CHECK_BUDGET_S"]),
            "wall_s": round(time.time() - float(os.environ["GPU_CHECK_T0"]), 1), "environment": env,
            "status_counts": {s: sum(st["status"] == s for st in steps)
                              for s in ("ok", "failed", "timeout", "skipped")},
            "steps": steps}
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out / "gpu_check.json")  # atomic: the file is whole even if the run is killed here

if __name__ == "__main__":
    {"environment": environment, "record": record, "summary": summary}[sys.argv[1]](*sys.argv[2:])
PYEOF
export GPU_CHECK_T0=$START

helper() { "$PY" -c "$HELPER" "$@"; }
selected() { [[ " $STEPS " == *" $1 "* ]]; }
quote() {  # the command as one shell line, for the record (the inline helper program is not repeated)
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "$HELPER" ]]; then printf '%s ' '<gpu_check.sh helper>'; else printf '%q ' "$arg"; fi
    done
}

# run_step NAME CAP_S "FILES..." CMD...: runs CMD under `timeout` (its cap, or what is left of the budget), appends
# its output to gpu_check.log, records status, exit code and wall time.
run_step() {
    local name=$1 cap=$2 files=$3; shift 3
    if ! selected "$name"; then
        helper record "$name" skipped "" 0 "" "not selected (GPU_CHECK_STEPS)" "$(quote "$@")"
        return
    fi
    local left=$((BUDGET_S - ($(date +%s) - START) - RESERVE_S))
    local limit=$((cap < left ? cap : left))
    if ((limit < MIN_STEP_S)); then
        helper record "$name" skipped "" 0 "" "budget exhausted (${left}s of ${BUDGET_S}s left)" "$(quote "$@")"
        return
    fi
    echo "===== $name: $(quote "$@") (timeout ${limit}s) =====" >> "$LOG"
    local t0 rc status wall
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" > "$SCRATCH/$name.log" 2>&1
    rc=$?
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    cat "$SCRATCH/$name.log" >> "$LOG"
    echo "===== $name: exit $rc after ${wall}s =====" >> "$LOG"
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    [[ $status != ok ]] && tail -n 15 "$SCRATCH/$name.log" | sed "s/^/    $name| /"
    # shellcheck disable=SC2086  # FILES is a word list
    helper record "$name" "$status" "$rc" "$wall" "$limit" "" "$(quote "$@")" $files
}

skip() {  # skip NAME REASON
    helper record "$1" skipped "" 0 "" "$2" ""
}

step() { run_step "$@"; }

find_fashion() {
    local dir
    for dir in "${FASHION_DIR:-}" "$REPO/$CARRY_DATA/fashion-mnist" "$REPO/shared/data/fashion-mnist" \
        "$REPO/../shared/data/fashion-mnist" "$REPO/data/fashion-mnist" /usr/share/datasets/fashion-mnist; do
        if [[ -n "$dir" ]] && compgen -G "$dir/train-images-idx3-ubyte*" > /dev/null; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

install_carried_wheels() {  # the carried wheels (.whl/) of modules this python cannot import, into scratch
    local wheel module missing=()
    for wheel in "$REPO"/.whl/*.whl; do
        [[ -f "$wheel" ]] || continue
        module=$(basename "$wheel" | cut -d- -f1)  # the distribution name is the module name for what we carry
        "$PY" -c "import $module" 2> /dev/null || missing+=("$wheel")
    done
    ((${#missing[@]})) || { echo "setup: no carried wheel needed"; return 0; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH/site" \
        "${missing[@]}" || { echo "setup: installing ${missing[*]##*/} failed"; return 0; }
    export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
    echo "setup: installed ${missing[*]##*/}"
}

echo "gpu_check: mode $([[ $DRY_RUN == 1 ]] && echo dry-run || echo gpu), device $DEVICE, budget ${BUDGET_S}s, out $OUT"
install_carried_wheels > "$SCRATCH/setup.log" 2>&1  # not in a pipeline: its PYTHONPATH must stay
export GPU_CHECK_SETUP
GPU_CHECK_SETUP=$(cat "$SCRATCH/setup.log")
tee -a "$LOG" < "$SCRATCH/setup.log"
helper summary false

step environment 60 "" "$PY" -c "$HELPER" environment "$SCRATCH/environment.json"
step gpu_tests 150 "" "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors
step train_step 180 train_step.json "$PY" benchmarks/train_step.py --device "$DEVICE" "${TRAIN_STEP_SIZE[@]}" \
    --json "$OUT/train_step.json"

if [[ -f benchmarks/decode_throughput.py ]]; then
    step decode_throughput "$DECODE_CAP" decode_throughput.json "$PY" benchmarks/decode_throughput.py \
        "${DECODE_SIZE[@]}" --json "$OUT/decode_throughput.json"
else
    skip decode_throughput "script missing: benchmarks/decode_throughput.py"
fi

if FASHION=$(find_fashion); then
    rm -rf "$SCRATCH/fashion_cifar_recipe"
    step fashion_recipe 240 fashion_metrics.jsonl "$PY" -m vitlab train cifar10_vit_tiny_mimetic \
        dataset=fashion_mnist image_size=32 epochs=2 eval_every=1 "data_dir=$FASHION" \
        "out_dir=$SCRATCH/fashion_cifar_recipe" progress=false "device=$DEVICE" "${FASHION_SIZE[@]}"
else
    skip fashion_recipe "Fashion-MNIST not found (FASHION_DIR, ./$CARRY_DATA/fashion-mnist, ./shared/data,\
 ../shared/data, ./data, /usr/share/datasets)"
fi

if [[ -f benchmarks/grad_checkpointing.py ]]; then
    step grad_checkpointing 180 grad_checkpointing.json "$PY" benchmarks/grad_checkpointing.py --device "$DEVICE" \
        "${GC_SIZE[@]}" --json "$OUT/grad_checkpointing.json"
else
    skip grad_checkpointing "script missing: benchmarks/grad_checkpointing.py"
fi

if [[ -f benchmarks/sliding_window.py ]]; then
    step sliding_window 120 "" "$PY" benchmarks/sliding_window.py --device "$DEVICE" "${SW_SIZE[@]}" \
        --json "$SCRATCH/sliding_window.json"
else
    skip sliding_window "script missing: benchmarks/sliding_window.py"
fi

step train_step_compile 300 train_step_compile.json "$PY" benchmarks/train_step.py --device "$DEVICE" --compile \
    "${COMPILE_SIZE[@]}" --json "$OUT/train_step_compile.json"

helper summary true
"$PY" - "$OUT/gpu_check.json" <<'PYEOF'
import json, sys
data = json.load(open(sys.argv[1]))
print(f"gpu_check {data['mode']}: {data['status_counts']} in {data['wall_s']} s -> {sys.argv[1]}")
sys.exit(1 if data["status_counts"]["failed"] + data["status_counts"]["timeout"] else 0)
PYEOF
