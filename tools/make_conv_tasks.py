"""Writes the fine-tuning tasks of the conv experiment (scripts/gpu-conv.sh
experiment) as labelled JSONL files small enough to travel to the GPU machine
in .gpu-data/ (the whole SpamAssassin corpus does not):

  spam.jsonl    every SpamAssassin e-mail (data/spam-assassin, the .json copies
                recast reads), its first 1024 characters, label ham | spam
  author.jsonl  which author wrote a 256-character passage: a State of the
                Union address (label sotu) or Moby Dick (label moby); 3000
                passages each, from disjoint positions

    python3 tools/make_conv_tasks.py data .gpu-data
"""

import glob
import json
import random
import sys
from pathlib import Path


def main():
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "spam.jsonl", "w") as f:
        for group in ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"]:
            label = "spam" if group.startswith("spam") else "ham"
            for path in sorted(glob.glob(str(data / "spam-assassin" / group / "*.json"))):
                text = json.load(open(path))["text"][:1024]
                f.write(json.dumps({"text": text, "label": label}) + "\n")
                n += 1
    rng = random.Random(0)
    sotu = " ".join(open(p).read() for p in sorted(glob.glob(str(data / "sotu" / "*.txt"))))
    moby = open(data / "moby-dick" / "data.txt").read()
    rows = []
    for text, label in [(sotu, "sotu"), (moby, "moby")]:
        text = " ".join(text.split())
        starts = rng.sample(range(0, len(text) - 256, 256), 3000)
        rows += [{"text": text[s:s + 256], "label": label} for s in starts]
    rng.shuffle(rows)
    with open(out / "author.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"spam.jsonl: {n} e-mails, author.jsonl: {len(rows)} passages")


if __name__ == "__main__":
    main()
