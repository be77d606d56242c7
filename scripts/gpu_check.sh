#!/usr/bin/env bash
# GPU check of the training step replayed as one CUDA graph (--cuda-graph) beside the eager step. Run from the
# project's root on a machine with an NVIDIA GPU: bash scripts/gpu_check.sh. Everything lands under $OUT
# (default /tmp/out); read $OUT/summary.txt first. Keeps going after a failing part. About 6-8 minutes.
set -u
OUT=${OUT:-/tmp/out}; CK=${CK:-/tmp/ck_graph}; mkdir -p "$OUT"; rm -rf "$CK"; S="$OUT/summary.txt"; : > "$S"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}
say() { echo "$*" | tee -a "$S"; }
part() { local name=$1; shift; local t0=$(date +%s); timeout "${LIMIT:-120}" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
         say "$name: rc=$rc $(( $(date +%s) - t0 ))s :: $(tail -n 1 "$OUT/$name.log" | cut -c1-160)"; }
train() { local name=$1; shift; part "$name" $PY scripts/train.py --preset small --run-name "$name" --checkpoint-dir "$CK" \
          --device cuda --no-progress "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$S"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$S"

# 1. step time per preset: eager and one CUDA graph, with each step's GPU kernel time beside its wall time
LIMIT=240 part bench $PY scripts/benchmark.py --device cuda --presets small,medium,large --rows 200000 --out "$OUT/bench.md"
grep -E "training step|as one CUDA graph|kernel time|operators per" "$OUT/bench.md" | tee -a "$S"

# 2. 200 demo steps both ways, losses side by side; then the graph run resumed to 300 beside a straight 300
train graph200 --max-steps 200 --cuda-graph
train eager200 --max-steps 200 --no-cuda-graph
train graph300 --max-steps 300 --cuda-graph
cp -r "$CK/graph200" "$CK/graphR"; train graphR --max-steps 300 --cuda-graph --resume

# 3. the T4 path (fp16 with the gradient scaler), forced, with the graph: 200 steps, resumed to 300, beside 300 straight
train f16_200 --max-steps 200 --precision fp16 --cuda-graph
cp -r "$CK/f16_200" "$CK/f16R"; train f16R --max-steps 300 --precision fp16 --cuda-graph --resume
train f16_300 --max-steps 300 --precision fp16 --cuda-graph
train f16_eager200 --max-steps 200 --precision fp16 --no-cuda-graph

$PY - "$CK" "$OUT" <<'PY' | tee -a "$S"
import csv, sys, torch
ck, out = sys.argv[1:3]
def losses(run):
    try:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(open(f"{ck}/{run}/history_steps.csv"))}
    except OSError:
        return {}
def compare(a, b):
    la, lb = losses(a), losses(b)
    steps = sorted(set(la) & set(lb))
    if not steps:
        return print(f"{a} vs {b}: no steps to compare")
    with open(f"{out}/{a}_vs_{b}.csv", "w") as f:
        f.write(f"step,{a},{b}\n" + "".join(f"{s},{la[s]:.6g},{lb[s]:.6g}\n" for s in steps))
    d = max(abs(la[s] - lb[s]) for s in steps)
    tail = steps[-20:]
    print(f"{a} vs {b}, {len(steps)} steps: max |loss difference| {d:.4f}; last 20 steps mean "
          f"{sum(la[s] for s in tail) / len(tail):.4f} vs {sum(lb[s] for s in tail) / len(tail):.4f}")
def weights(a, b):
    try:
        wa, wb = (torch.load(f"{ck}/{r}/last.pt", weights_only=True, map_location="cpu") for r in (a, b))
    except OSError as e:
        return print(f"{a} vs {b}: {e}")
    d = max((wa["model"][k].float() - wb["model"][k].float()).abs().max().item() for k in wa["model"])
    print(f"{a} (resumed) vs {b} (straight), step {wa['step']} / {wb['step']}: max |weight difference| {d:.3g}"
          f"{' (bitwise equal)' if d == 0 else ''}")
compare("graph200", "eager200")
compare("f16_200", "f16_eager200")
compare("graphR", "graph300")
weights("graphR", "graph300")
compare("f16R", "f16_300")
weights("f16R", "f16_300")
PY
grep -h "skipped\|note:" "$OUT"/f16*.log "$OUT"/graph*.log 2>/dev/null | sort | uniq -c | head -5 | tee -a "$S"

# 4. the fast tests (device auto is CUDA here), the real-capture tests of tests/test_cuda_graph.py included
LIMIT=200 part tests $PY -m pytest -x -q -o addopts="" tests/test_cuda_graph.py tests/test_train.py tests/test_model.py \
    -k "not signal and not sigint and not ctrl_c"
say "done"
