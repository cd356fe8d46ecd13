"""How long `import cyclr` (the front door: every public name) takes beyond `import torch`, in fresh interpreters.

Each run is a new `python` process that times `import torch`, then `import cyclr` (which brings `cyclr.learner`,
`cyclr.callbacks` and `cyclr.data` with it); the medians over the runs are printed, with the slowest modules of one
`-X importtime` run. Target (issue 22): `import cyclr` < 0.1 s beyond torch.

    nice .venv/bin/python benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import cyclr
t2 = time.perf_counter()
heavy = [m for m in ("pandas", "matplotlib", "fastprogress", "torchvision", "scipy") if m in sys.modules]
print(json.dumps({"torch": t1 - t0, "cyclr": t2 - t1, "heavy": heavy}))
"""


def slowest_modules(n: int = 8) -> list[tuple[float, str]]:
    """The modules with the largest cumulative import time under `import cyclr`, torch's own excluded."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch; import cyclr"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit() and not name.startswith(("torch", "numpy", "sympy", "typing")):
            rows.append((int(cumulative) / 1e6, name))
    after_torch = [r for r in rows if r[1].split(".")[0] == "cyclr"]
    return sorted(after_torch, reverse=True)[:n]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    torch_s = statistics.median(r["torch"] for r in results)
    cyclr_s = statistics.median(r["cyclr"] for r in results)
    print(f"{args.runs} fresh interpreters ({sys.executable}):")
    print(f"  import torch                   median {torch_s:.3f} s")
    print(f"  import cyclr, after torch      median {cyclr_s:.3f} s  (max {max(r['cyclr'] for r in results):.3f}; "
          "target < 0.1 s)")
    print(f"  heavy modules loaded by it:    {', '.join(results[-1]['heavy']) or 'none'}")
    print("  slowest of ours (cumulative, one -X importtime run):")
    for seconds, name in slowest_modules():
        print(f"    {seconds:6.3f} s  {name}")


if __name__ == "__main__":
    main()
