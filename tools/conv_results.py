"""The conv experiment's table (docs/results.md) from the files that
scripts/gpu-conv.sh experiment-* wrote: pretraining loss (span corruption,
held-out) and wall time of each model, then each fine-tune's held-out loss
and exact-match accuracy per task.

    python3 tools/conv_results.py bench/results/2026-12-04-gpu-conv/experiment
"""

import json
import sys
from pathlib import Path


def lines(path):
    return [json.loads(l) for l in open(path)] if path.exists() else []


def main():
    d = Path(sys.argv[1])
    print("| model | pretraining eval loss (span corruption) | pretraining wall s |")
    print("|---|---|---|")
    for v in ["softmax", "lightweight", "dynamic", "dilated"]:
        m = lines(d / f"pre-{v}-metrics.jsonl")
        ev = [r for r in m if r.get("split") == "eval"]
        tr = [r for r in m if r.get("split") == "train"]
        print(f"| {v} | {ev[-1]['loss']:.3f} | {tr[-1]['elapsed_s']:.1f} |" if ev and tr else f"| {v} | - | - |")
    print()
    print("| fine-tuned from | spam: test loss | spam: exact match | author: test loss | author: exact match |")
    print("|---|---|---|---|---|")
    for m in ["pre-softmax", "pre-lightweight", "pre-dynamic", "pre-dilated", "conv-plain", "conv-transfer",
              "scratch-softmax", "scratch-lightweight", "scratch-dynamic", "scratch-dilated"]:
        row = [m]
        for task in ["spam", "author"]:
            p = d / f"eval-{task}-{m}.json"
            try:
                j = json.loads(p.read_text())
                row += [f"{j['loss']:.4f}", f"{j['accuracy']:.3f}"]
            except (OSError, ValueError, KeyError):
                row += ["-", "-"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
