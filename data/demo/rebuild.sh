#!/usr/bin/env bash
# Rebuilds the demo data from scratch: fetches the UniProt sequences shipped in Debian's
# mmseqs2-examples package, keeps the human and the viral proteins, and rebuilds dataset.csv.gz.
# Run from anywhere on Debian/Ubuntu, with Python 3.10+ and numpy (set PYTHON to choose the interpreter).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
DB_SHA256=92a65aa435f5d3e0f33eb47d87910fe7fc6033a28bf4ed1367094377d791d567   # DB.fasta.gz in 14-7e284+ds-1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && apt-get download mmseqs2-examples) \
    || { echo "apt-get could not fetch mmseqs2-examples; run 'apt-get update' (as root) first" >&2; exit 1; }
dpkg -x "$work"/mmseqs2-examples_*.deb "$work/pkg"
src=$(find "$work/pkg" -name DB.fasta.gz | head -n 1)
echo "$DB_SHA256  $src" | sha256sum --check --quiet \
    || echo "warning: this DB.fasta.gz differs from the one the shipped files were built from" >&2

"$PYTHON" -c 'import sys; sys.path.insert(0, "scripts"); import build_dataset as d
print("human proteins:", d.subset_fasta(sys.argv[1], "data/demo/human.fasta.gz", d.is_human))
print("viral proteins:", d.subset_fasta(sys.argv[1], "data/demo/viral.fasta.gz", d.is_viral))' "$src"

"$PYTHON" scripts/build_dataset.py --human data/demo/human.fasta.gz --viral data/demo/viral.fasta.gz \
    --motifs data/demo/motifs.json --n-human 20000 --n-viral 20000 --seed 0 --out data/demo/dataset.csv.gz
