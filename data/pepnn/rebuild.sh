#!/usr/bin/env bash
# Rebuilds dataset.csv.gz from the shipped files: the PDB peptide-receptor pairs (pairs.csv.gz) as the
# label-1 rows, background windows of the demo's UniProt proteins (data/demo/*.fasta.gz) as label 0.
# Run from anywhere with Python 3.10+ and numpy (set PYTHON to choose the interpreter).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}

"$PYTHON" scripts/build_dataset.py --human data/demo/human.fasta.gz --viral data/demo/viral.fasta.gz \
    --interactions data/pepnn/pairs.csv.gz --n-human 15000 --n-viral 10000 --seed 0 --out data/pepnn/dataset.csv.gz
"$PYTHON" mimir_core.py verify-data data/pepnn/dataset.csv.gz | tail -n 2
