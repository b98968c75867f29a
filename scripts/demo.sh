#!/usr/bin/env bash
# The README's first command: set up .venv, synthesise a small perspective dataset, build verified shards,
# train the `demo` preset (tiny HRNet + PE, 64 px crops) on the CPU, evaluate it on the held-out test split in the
# original camera frame, and print the metrics table beside what a model that learned nothing scores.
# About 9 minutes on 2 CPU cores.
#   bash scripts/demo.sh [OUT_DIR]        (default demo_out/; it is recreated on every run)
#   DEMO_SEED=N bash scripts/demo.sh      (another synthetic dataset: seeds N, N+1, N+2 for train/val/test)
#   DEMO_PRESET=demo_hps bash scripts/demo.sh   (the same with the HPS heads: meshes and PVE in the report)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
OUT=${1:-demo_out}
SEED=${DEMO_SEED:-0}
PRESET=${DEMO_PRESET:-demo}
# people wholly in frame: half of the default generator's people are cut by the image border, and their hidden
# joints are guesswork that 5 minutes of CPU training cannot learn (docs/learning.md)
SYNTH=(--min-box-inside 1)
BIN=.venv/bin
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1/5 synthesise people with known cameras (train / val / test)"
$BIN/perspose-build synth --out "$OUT/synth/train" --split train -n 16000 --seed "$SEED" "${SYNTH[@]}"
$BIN/perspose-build synth --out "$OUT/synth/val" --split val -n 200 --seed $((SEED + 1)) "${SYNTH[@]}"
$BIN/perspose-build synth --out "$OUT/synth/test" --split test -n 300 --seed $((SEED + 2)) "${SYNTH[@]}"

step "2/5 build perspective-rotated shards (64 px crops, as the demo model takes) and verify them"
for split in train val test; do
    $BIN/perspose-build shards "$OUT/synth/$split/manifest.parquet" --out "$OUT/shards/$split" --crop 64 \
        --shard-size 1000
    $BIN/perspose-build verify "$OUT/shards/$split"
done
$BIN/perspose-build show "$OUT/shards/train" -n 16 --tile 160 --out "$OUT/train_sheet.png" --hist "$OUT/pr_angle.png"

step "3/5 train the $PRESET preset (2 processes of one thread; best checkpoint chosen on val, never on test)"
# torchrun: one process per core (gloo, gradients averaged each step); see trainer/configs/demo.yaml for why
$BIN/torchrun --standalone --nproc_per_node 2 $BIN/perspose-train --config "$PRESET" --train "$OUT/shards/train" \
    --val "$OUT/shards/val" --out "$OUT/run"

step "4/5 evaluate on the held-out test split (flip test, Rᵀ back to the original camera)"
$BIN/perspose-eval --ckpt "$OUT/run/best.pt" --shards "$OUT/shards/test" --out "$OUT/eval" --workers 0

step "5/5 results"
cat "$OUT/eval/report.md"
echo
echo "Outputs in $OUT/: train_sheet.png (crops with joints), pr_angle.png, run/loss_curve.png, run/metrics.csv,"
echo "eval/report.md, eval/report.json, eval/predictions.parquet and the eval plots (with demo_hps also"
echo "eval/mesh_overlay.png: predicted and true meshes over test crops)."
