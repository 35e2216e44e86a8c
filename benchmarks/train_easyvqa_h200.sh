#!/usr/bin/env bash
# easy-VQA on one H200: the diffusion captioner (configs/easyvqa_mdlm.yaml, complementary masking) and its AR twin
# (configs/easyvqa_ar.yaml) side by side from the CIFAR-10 tower, then, in a second phase, the diffusion captioner
# started from the AR twin's trained tower (the recipe that reached 99.5% in caption.md r4). Each export's test
# accuracy on the 9,673 test questions (python -m zoo.data.easy_vqa --evaluate, 4 / 2 / 1 diffusion steps).
# Other work (e.g. benchmarks/train_clip_h200.sh) may share the GPU: the fits stop by the clock (trainer.max_time).
#
# Inputs, carried: .data/minilm-tokenizer/ (config.json special_tokens_map.json tokenizer.json tokenizer_config.json
# vocab.txt of $ZOO_DATA/all-MiniLM-L6-v2-fp16.zip: the answers' WordPiece split), .whl/ with easy_vqa-1.0 (its
# images) and LightningCLI's jsonargparse, docstring_parser, typeshed_client.
# Knobs: PHASE1_TIME (clock of the first two fits, default 00:00:03:30), AR_TIME (the AR twin's, default PHASE1_TIME),
# PHASE2_TIME (the second phase's, default 00:00:03:30; PHASE2=0 skips it), ACCEL (default gpu; "cpu" with TINY=1
# checks the script on a CPU: 2 steps on 64 questions).
# Back in $OUT: easyvqa.json (test accuracy of every export), export_vqa_<run>.safetensors for the runs in BRING
# (default "comp comp_artower"), vqa.tgz (metrics.csv, fit summaries, configs, logs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
TOK=${TOK:-$PWD/.data/minilm-tokenizer}
ACCEL=${ACCEL:-gpu}
PY=${PY:-python3}
RUNS=runs/easyvqa_h200
PHASE1_TIME=${PHASE1_TIME:-00:00:03:30}
t0=$SECONDS

# the carried wheels, installed once per machine (/tmp/site/.zoo-wheels): two scripts sharing a call must not
# reinstall them under each other's running fits
if ls .whl/*.whl >/dev/null 2>&1; then
  if [ ! -f /tmp/site/.zoo-wheels ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 \
      && touch /tmp/site/.zoo-wheels
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -f "$TOK/vocab.txt" ] || { echo "missing $TOK/vocab.txt (see the header of $0)"; exit 2; }
tiny=()
[ -n "${TINY:-}" ] && tiny=(--data.init_args.train_subset 64 --data.init_args.val_subset 32 --data.init_args.batch_size 8
                            --trainer.max_steps 2 --trainer.max_epochs 1)

fit() {  # fit RUN KIND MAX_TIME [overrides...]
  local run=$1 kind=$2 clock=$3; shift 3
  mkdir -p "$RUNS/$run"
  timeout -k 10 "${TRAIN_TIMEOUT:-330}" $PY -m zoo.cli fit --config "configs/easyvqa_$kind.yaml" \
    --trainer.accelerator "$ACCEL" --trainer.max_time "$clock" --trainer.default_root_dir "$RUNS/$run" \
    --progress log --data.init_args.tokenizer "$TOK" "${tiny[@]}" "$@" > "$RUNS/$run/train.log" 2>&1
  echo "=== $run: $((SECONDS - t0)) s"; tail -n 3 "$RUNS/$run/train.log"
}

fit comp mdlm "$PHASE1_TIME" &
fit ar ar "${AR_TIME:-$PHASE1_TIME}"
runs="comp ar"
if [ "${PHASE2:-1}" = 1 ] && [ -f "$RUNS/ar/export.safetensors" ]; then
  fit comp_artower mdlm "${PHASE2_TIME:-00:00:03:30}" --model.init_args.tower_from "$RUNS/ar/export.safetensors"
  runs="$runs comp_artower"
fi
wait

steps=(--steps 4 2 1)
[ -n "${TINY:-}" ] && steps=(--steps 2 --limit 32)
for r in $runs; do
  [ -f "$RUNS/$r/export.safetensors" ] || { echo "$r: no export"; continue; }
  s=("${steps[@]}"); [ "$r" = ar ] && s=()
  timeout -k 5 "${EVAL_TIMEOUT:-90}" $PY -m zoo.data.easy_vqa --evaluate "$RUNS/$r/export.safetensors" \
    --device "$([ "$ACCEL" = gpu ] && echo cuda || echo cpu)" --tokenizer "$TOK" "${s[@]}" \
    --json "$RUNS/$r/easyvqa.json" 2>&1 | tail -n 4
done
$PY - "$RUNS" "$OUT/easyvqa.json" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
rows = {p.parent.name: json.loads(p.read_text()) for p in sorted(runs.glob("*/easyvqa.json"))}
Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
EOF
for r in ${BRING:-comp comp_artower}; do  # the run tool brings back 8 files of <= 16 MiB: exports travel alone
  [ -f "$RUNS/$r/export.safetensors" ] && cp "$RUNS/$r/export.safetensors" "$OUT/export_vqa_$r.safetensors"
done
tar czf "$OUT/vqa.tgz" $(find "$RUNS" -name 'metrics.csv' -o -name 'fit_summary.json' \
  -o -name 'config.yaml' -o -name '*.log' -o -name 'easyvqa.json' 2>/dev/null)
echo "=== easy-VQA total: $((SECONDS - t0)) s"
