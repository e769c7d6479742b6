#!/usr/bin/env python3
"""Peak resident memory and wall time of recast commands on a checkpoint.

    python3 tools/peak_rss.py CHECKPOINT_DIR OUT.jsonl -- LABEL CMD... [-- LABEL CMD...]

Each command runs alone (a fresh process); its peak RSS is the kernel's
ru_maxrss of that child (os.wait4; file-backed pages of the memory-mapped
checkpoint included), reported beside the checkpoint's weight bytes. `{inputs}` in a
command is replaced by a safetensors file holding input_ids [1, 16] (ids
1..16), written here without any ML library.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def weight_bytes(d):
    return sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))


def write_inputs(path):
    ids = list(range(1, 17))
    header = json.dumps({"input_ids": {"dtype": "I64", "shape": [1, len(ids)],
                                       "data_offsets": [0, 8 * len(ids)]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(ids)}q", *ids))


def main():
    ckpt, out = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    runs, cur = [], None
    for a in rest:
        if a == "--":
            cur = []
            runs.append(cur)
        else:
            cur.append(a)
    size = weight_bytes(ckpt)
    tmp = tempfile.mkdtemp()
    inputs = os.path.join(tmp, "inputs.safetensors")
    write_inputs(inputs)
    with open(out, "a") as f:
        for run in runs:
            label, cmd = run[0], [c.replace("{inputs}", inputs).replace("{tmp}", tmp) for c in run[1:]]
            with open(os.path.join(tmp, "stdout"), "w") as so, open(os.path.join(tmp, "stderr"), "w") as se:
                t0 = time.perf_counter()
                p = subprocess.Popen(cmd, stdout=so, stderr=se)
                _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
                wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            r = p
            r.stderr = open(os.path.join(tmp, "stderr")).read()
            peak_kib = usage.ru_maxrss
            row = {"label": label, "cmd": " ".join(run[1:]), "rc": r.returncode, "wall_s": round(wall, 2),
                   "peak_rss_bytes": peak_kib * 1024, "checkpoint_bytes": size,
                   "peak_over_checkpoint": round(peak_kib * 1024 / size, 3)}
            if r.returncode != 0:
                row["stderr"] = r.stderr[-500:]
            loaded = [l for l in r.stderr.splitlines() if "loaded " in l]
            if loaded:  # the loader's own line (-v): bytes used in place / copied, load time
                row["load"] = loaded[-1][-200:]
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
