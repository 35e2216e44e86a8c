#!/usr/bin/env bash
# Tiny Shakespeare language models on ONE H200: MDLM and its AR twin on softmax attention and on GLA, the four
# fits side by side on the one GPU (same network per mixer, same steps / batch / context / time budget), then
# the final validation figures (AR: exact nats/char; MDLM: NELBO over 32 antithetic t per window, all 435
# validation windows of 256 characters), curves and fp16 exports copied into $OUT.
#   bash benchmarks/train_lm_h200.sh                 # the recipes' clocks: 6 min (softmax pair), 5.5 min (GLA pair)
#   RECIPES="mdlm_attn ar_attn" bash benchmarks/train_lm_h200.sh   # the shipped pair alone (lm_training.md r4)
#   RECIPES="mdlm_attn ar_attn" bash benchmarks/train_lm_h200.sh --trainer.max_steps 20   # any override
# Env: OUT (default out/), DATA (folder with tinyshakespeare.txt, default .data), RUNS (default runs/),
# NUM_T (NELBO samples per window, default 32), EVAL_ARGS (e.g. "--max-windows 4"), PYTHON (default python3),
# RESUME=1 continues killed runs. SAMPLING=1 then runs benchmarks/lm_sampling.py on the exports (SAMPLING_ARGS,
# SAMPLING_TIMEOUT, JUDGE=ar_attn), results into $OUT/lm/lm_sampling.{json,md}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; RUNS=${RUNS:-runs}; DATA=${DATA:-.data}; PY=${PYTHON:-python3}
mkdir -p "$OUT/lm"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_DATA="$DATA" ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
RECIPES=${RECIPES:-mdlm_attn ar_attn mdlm_gla ar_gla}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
t0=$SECONDS
pids=()
for r in $RECIPES; do
  $PY -m zoo.cli fit --config "configs/tinyshakespeare_$r.yaml" --progress log \
    --trainer.default_root_dir "$RUNS/tinyshakespeare_$r" ${RESUME:+--resume} "$@" > "$OUT/lm/fit_$r.log" 2>&1 &
  pids+=($!)
done
i=0
for r in $RECIPES; do
  wait "${pids[$i]}"; echo "fit $r: rc=$? ($((SECONDS - t0)) s)"; tail -n 3 "$OUT/lm/fit_$r.log"; i=$((i + 1))
done
for r in $RECIPES; do
  run="$RUNS/tinyshakespeare_$r"
  [ -f "$run/export.safetensors" ] || { echo "no export for $r"; continue; }
  $PY -m zoo.cli eval "${r%%_*}_small_${r#*_}" --checkpoint "$run/export.safetensors" --num-t "${NUM_T:-32}" \
    ${EVAL_ARGS:-} --out "$OUT/lm/eval_$r.json" > "$OUT/lm/eval_$r.log" 2>&1; echo "eval $r: rc=$?"
  cp "$run/export.safetensors" "$OUT/lm/tinyshakespeare_$r.safetensors"
  cp "$run/fit_summary.json" "$OUT/lm/summary_$r.json"
  for v in "$run"/csv/version_*; do cp "$v/metrics.csv" "$OUT/lm/curve_${r}_$(basename "$v").csv" 2>/dev/null; done
done
$PY - "$OUT/lm" $RECIPES <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for r in sys.argv[2:]:
    e = out / f"eval_{r}.json"
    s = out / f"summary_{r}.json"
    if e.exists() and s.exists():
        e, s = json.loads(e.read_text()), json.loads(s.read_text())
        print(f"{r:10s} steps {s['global_step']:5d} train {s['train_seconds']:6.1f}s params {e['params']:,}  "
              f"val {e['nats_per_char']:.4f} nats/char ({e['bits_per_char']:.4f} bpc, {e['estimator']})")
PY
if [ -n "${SAMPLING:-}" ]; then  # the sampling benchmark on the fresh exports (judge: the softmax AR twin)
  mdlms=(); for r in $RECIPES; do case $r in mdlm_*) [ -f "$RUNS/tinyshakespeare_$r/export.safetensors" ] && \
    mdlms+=("$RUNS/tinyshakespeare_$r/export.safetensors");; esac; done
  timeout -k 10 "${SAMPLING_TIMEOUT:-600}" $PY -m benchmarks.lm_sampling --mdlm "${mdlms[@]}" \
    --ar "$RUNS/tinyshakespeare_${JUDGE:-ar_attn}/export.safetensors" --out "$OUT/lm" ${SAMPLING_ARGS:-} \
    > "$OUT/lm/sampling.log" 2>&1; echo "sampling: rc=$?"; tail -n 40 "$OUT/lm/sampling.log"
fi
echo "total $((SECONDS - t0)) s"
