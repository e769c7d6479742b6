#!/usr/bin/env python3
"""The Refiner experiment's table (docs/results.md) from the raw files of
scripts/gpu-refiner.sh: per run, the validation accuracy and loss at each
evaluation (from its log), the test accuracy and the mean corruption accuracy
where `eval` ran, the mCE of each refined run against the plain run of the
same seed (fine-tunes) or the same budget (from scratch) (CE_c = sum_s err / sum_s err of the baseline, as `eval --corrupt
--baseline`), and the refiners' gates and map change from metrics.jsonl.
Usage: tools/refiner_results.py DIR [DIR...]  (files of later DIRs win)
"""
import glob
import json
import os
import re
import statistics
import sys


def runs(dirs):
    found = {}
    for d in dirs:
        for log in glob.glob(os.path.join(d, "*.log")):
            name = os.path.basename(log)[:-4]
            evals = re.findall(r"step (\d+): eval loss ([0-9.]+), accuracy ([0-9.]+)", open(log).read())
            if not evals:
                continue
            r = {"evals": [(int(s), float(l), float(a)) for s, l, a in evals], "dir": d}
            for kind in ("eval", "corrupt"):
                f = os.path.join(d, f"{name}-{kind}.json")
                if os.path.exists(f) and os.path.getsize(f) > 0:
                    r[kind] = json.load(open(f))
            m = os.path.join(d, f"{name}-metrics.jsonl")
            if os.path.exists(m):
                stats = [json.loads(x) for x in open(m) if '"split":"refiner"' in x]
                if stats:
                    r["refiner"] = stats[-1]
            found[name] = r
    return found


def ce(model, base):
    out = []
    for c, sev in model["accuracy"].items():
        err = sum(1 - a for a in sev.values())
        err_base = sum(1 - a for a in base["accuracy"][c].values())
        out.append(err / err_base)
    return sum(out) / len(out)


def main():
    found = runs(sys.argv[1:])
    print("| run | steps | val acc | val loss | test acc | corruption acc | mCE vs plain | gate (mean |g|) | map change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sorted(found):
        r = found[name]
        step, loss, acc = r["evals"][-1]
        test = f"{r['eval']['accuracy']:.4f}" if "eval" in r else "-"
        corr = mce = "-"
        if "corrupt" in r:
            accs = [a for sev in r["corrupt"]["accuracy"].values() for a in sev.values()]
            corr = f"{statistics.mean(accs):.4f}"
            # a refined fine-tune against the plain one of its seed, a refined
            # scratch run against the plain scratch run of its budget
            suffix = name.rsplit("-", 1)[-1]
            kind = "ft" if name.startswith("refined-ft") else "scratch"
            base = found.get(f"plain-{kind}-{suffix}")
            if name.startswith("refined-") and base and "corrupt" in base:
                mce = f"{100 * ce(r['corrupt'], base['corrupt']):.1f}%"
        gate = change = "-"
        if "refiner" in r:
            layers = r["refiner"]["layers"].values()
            gate = f"{statistics.mean(abs(g) for l in layers for g in l['gate']):.2e} (step {r['refiner']['step']})"
            change = f"{statistics.mean(l['change'] for l in layers):.3f}"
        print(f"| {name} | {step} | {acc:.4f} | {loss:.4f} | {test} | {corr} | {mce} | {gate} | {change} |")
    for group in ("plain-ft", "refined-ft"):
        members = [found[n] for n in found if n.startswith(group + "-")]
        for what, values in (("val acc at the last eval", [r["evals"][-1][2] for r in members]),
                             ("test acc", [r["eval"]["accuracy"] for r in members if "eval" in r])):
            if values:
                print(f"\n{group}: {what}, mean {statistics.mean(values):.4f} "
                      f"(min {min(values):.4f}, max {max(values):.4f}, {len(values)} seeds)")


if __name__ == "__main__":
    main()
