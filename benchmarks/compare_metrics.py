"""python benchmarks/compare_metrics.py BEFORE AFTER NAME...: metrics.jsonl of each run, compared record by record with the timing
fields (elapsed_s, *_per_s, mfu) removed; every other value must be bit-identical (JSON floats round-trip exactly)."""
import json, sys
from pathlib import Path

TIMING = ("elapsed_s", "mfu")

def records(path):
    out = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in TIMING and not k.endswith("_per_s")})
    return out

before, after, names = sys.argv[1], sys.argv[2], sys.argv[3:]
ok = True
for name in names:
    a, b = records(f"{before}/{name}/metrics.jsonl"), records(f"{after}/{name}/metrics.jsonl")
    same = a == b
    ok &= same
    keys = sorted({k for r in a for k in r})
    print(f"{name}: {len(a)} vs {len(b)} records, {'IDENTICAL' if same else 'DIFFERENT'} (fields compared: {', '.join(keys)})")
    if not same:
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                print("  first difference at record", i, x, y); break
sys.exit(0 if ok else 1)
