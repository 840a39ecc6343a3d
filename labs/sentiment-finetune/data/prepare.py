#!/usr/bin/env python3
"""Build the sentiment-finetune splits from the npm package sentiment@5.0.2.

Usage: prepare.py FIXTURES_DIR LAB_DIR
FIXTURES_DIR holds amazon.json, imdb.json and yelp.json (package/test/fixtures
of the npm tarball). Standard library only; output is byte-for-byte
deterministic.

Split rule: exact duplicate sentences (after whitespace normalisation) are
kept once (first occurrence, in the order amazon, imdb, yelp). Each sentence
goes to a bucket by the first byte of sha256("sanhak-sentiment-v1\\t" + text):
  bucket % 10 in 0..=6 -> data/train.jsonl
  bucket % 10 == 7     -> data/valid.jsonl
  bucket % 10 in 8..=9 -> hidden/test.jsonl
"""
import hashlib
import json
import os
import sys

SOURCES = ["amazon", "imdb", "yelp"]


def main() -> None:
    fixtures, lab = sys.argv[1], sys.argv[2]
    seen = set()
    rows = {"train": [], "valid": [], "test": []}
    for source in SOURCES:
        with open(os.path.join(fixtures, f"{source}.json"), encoding="utf-8") as f:
            items = json.load(f)
        for item in items:
            text = " ".join(str(item.get("text") or "").split())
            label = item.get("class")
            # Each fixture ends with an empty {"text": "", "class": null} row.
            if not text or label not in (0, 1) or text in seen:
                continue
            seen.add(text)
            h = hashlib.sha256(("sanhak-sentiment-v1\t" + text).encode("utf-8")).digest()
            b = h[0] % 10
            split = "train" if b <= 6 else ("valid" if b == 7 else "test")
            rows[split].append({"text": text, "label": label, "source": source})
    out = {
        "train": os.path.join(lab, "data", "train.jsonl"),
        "valid": os.path.join(lab, "data", "valid.jsonl"),
        "test": os.path.join(lab, "hidden", "test.jsonl"),
    }
    for split, path in out.items():
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in rows[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        pos = sum(r["label"] for r in rows[split])
        print(f"{split}: {len(rows[split])} sentences ({pos} positive) -> {path}")


if __name__ == "__main__":
    main()
