#!/usr/bin/env python3
"""Regenerate the Fashion-MNIST subsets shipped with the fashion-transfer lab.

Usage: make_data.py SOURCE_DIR LAB_DIR

SOURCE_DIR holds the four gzipped IDX files of Fashion-MNIST as shipped by the
Debian package `dataset-fashion-mnist` (usr/share/datasets/fashion-mnist/).
The selection is deterministic: files are walked in their original order and
an example is kept while its class quota is not yet full.  Output files are
plain (uncompressed) IDX files, which the Sanhak runner reads directly.
"""
import gzip
import os
import struct
import sys


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def write_idx(path, items, item_shape):
    ndim = 1 + len(item_shape)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x00000800 | ndim))
        f.write(struct.pack(">" + "I" * ndim, len(items), *item_shape))
        for it in items:
            f.write(it)


def select(images, labels, classes, per_class, skip_per_class=0):
    seen = {c: 0 for c in classes}
    out_x, out_y = [], []
    for i, y in enumerate(labels):
        if y not in seen:
            continue
        seen[y] += 1
        if seen[y] <= skip_per_class or seen[y] > skip_per_class + per_class:
            continue
        out_x.append(images[i * 784 : (i + 1) * 784])
        out_y.append(bytes([y]))
    return out_x, out_y


def main():
    src, lab = sys.argv[1], sys.argv[2]
    (_, _, _), train_x = read_idx(os.path.join(src, "train-images-idx3-ubyte.gz"))
    (_,), train_y = read_idx(os.path.join(src, "train-labels-idx1-ubyte.gz"))
    (_, _, _), test_x = read_idx(os.path.join(src, "t10k-images-idx3-ubyte.gz"))
    (_,), test_y = read_idx(os.path.join(src, "t10k-labels-idx1-ubyte.gz"))
    old, new = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    splits = {
        # name: (folder, images, labels, classes, per_class, skip_per_class)
        "base-train": ("data", train_x, train_y, old, 400, 0),
        "base-valid": ("data", test_x, test_y, old, 60, 0),
        "train": ("data", train_x, train_y, new, 50, 0),
        "valid": ("data", train_x, train_y, new, 100, 50),
        "test": ("hidden", test_x, test_y, new, 200, 0),
    }
    for name, (folder, xs, ys, classes, n, skip) in splits.items():
        x, y = select(xs, ys, classes, n, skip)
        os.makedirs(os.path.join(lab, folder), exist_ok=True)
        write_idx(os.path.join(lab, folder, name + "-images.idx3"), x, (28, 28))
        write_idx(os.path.join(lab, folder, name + "-labels.idx1"), y, ())
        print(f"{folder}/{name}: {len(y)} examples")


if __name__ == "__main__":
    main()
