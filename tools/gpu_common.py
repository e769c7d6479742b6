"""What the GPU-machine checks share: the error measure and running recast.

    rel(a, b)                       max |a - b| / max |b|, in double
    run_recast(build, *args)        stdout of `BUILD/recast ARGS`; raises with its stderr
    recast_logits(build, model, inputs, out, device, dtype, extra=())
                                    `recast forward` of inputs.safetensors -> the logits
"""

import subprocess
from pathlib import Path

import safetensors.torch as st


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def run_recast(build, *args):
    cmd = [str(Path(build) / "recast"), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def recast_logits(build, model_dir, inputs_path, out_path, device, dtype, extra=()):
    run_recast(build, "forward", "--model", model_dir, "--input", inputs_path, "--output", out_path,
               "--device", device, "--dtype", dtype, "-q", *extra)
    return st.load_file(str(out_path))["logits"]
