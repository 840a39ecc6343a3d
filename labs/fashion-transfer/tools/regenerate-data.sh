#!/usr/bin/env bash
# Rebuild data/ and hidden/ of the fashion-transfer lab from the Debian package
# dataset-fashion-mnist (version pinned below; Fashion-MNIST is MIT-licensed).
set -euo pipefail
VERSION="0.0~git20200523.55506a9-1"
LAB_DIR="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get download "dataset-fashion-mnist=${VERSION}"
dpkg-deb -x dataset-fashion-mnist_*_all.deb extracted
python3 "$LAB_DIR/tools/make_data.py" extracted/usr/share/datasets/fashion-mnist "$LAB_DIR"
( cd "$LAB_DIR" && sha256sum data/*.idx* hidden/*.idx* )
