python3 - <<'PY'
import json, subprocess
rows = [json.loads(l) for l in open(".gpu-data/spam.jsonl")][:4000:500]
for r in rows:
    out = subprocess.run(["build-gpu/recast", "generate", "--model", "build-gpu/runs/ft-spam-pre-dynamic", "--prompt", r["text"][:300],
                          "--max-tokens", "6", "--temperature", "0", "--json", "--device", "cuda"], capture_output=True, text=True)
    print(r["label"], "->", out.stdout.strip()[-160:], out.stderr.strip()[-200:])
PY
