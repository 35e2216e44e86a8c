#!/usr/bin/env bash
# CIFAR-10 hybrid comparison on ONE H200: pure softmax, pure Mamba, pure GLA, 3 GLA : 1 softmax, Mamba first half /
# softmax last, and the intra-layer hybrid, all at vit_micro_patch4_32's width and depth, the six fits side by side
# on the one GPU with configs/cifar10_vit_micro.yaml's recipe and one time budget (configs/cifar10_hybrid_*.yaml:
# trainer.max_time), then top-1 of each export on the test set (zoo eval), then images/s and peak memory of each
# model measured ALONE (zoo bench throughput, batch 512 at 32 px, bf16; concurrent fits distort speed), joined by
# benchmarks/hybrid_cifar10.py into hybrid_cifar10.{json,md} (copied into benchmarks/results/ and $OUT/hybrid/).
#   bash benchmarks/train_hybrid_h200.sh                          # the configs' budget (3 min of training each)
#   BUDGET=00:00:03:00 bash benchmarks/train_hybrid_h200.sh       # another budget for all six
#   MODELS="softmax hybrid" bash benchmarks/train_hybrid_h200.sh --trainer.max_steps 20   # any zoo fit override
# Env: OUT (default out/), DATA (folder with cifar10-{train,test}.zip, default .data), RUNS (default runs/),
# PYTHON (default python3), RESUME=1 continues killed runs, BENCH_ARGS (extra zoo bench throughput arguments, e.g.
# "--iters 5"), EVAL_ARGS (extra zoo eval arguments, e.g. "--subset 10"), BENCH_BATCH (default 512).
# The fp16 exports (< 8 MB each) come back as $OUT/hybrid/cifar10_hybrid_<model>.safetensors.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; RUNS=${RUNS:-runs}; DATA=${DATA:-.data}; PY=${PYTHON:-python3}
mkdir -p "$OUT/hybrid"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_DATA="$DATA" ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
MODELS=${MODELS:-softmax mamba gla gla3softmax1 mamba6softmax6 hybrid}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
t0=$SECONDS
pids=()
for m in $MODELS; do
  $PY -m zoo.cli fit --config configs/cifar10_vit_micro.yaml --config "configs/cifar10_hybrid_$m.yaml" --progress log \
    --trainer.default_root_dir "$RUNS/cifar10_hybrid_$m" ${BUDGET:+--trainer.max_time "$BUDGET"} ${RESUME:+--resume} \
    "$@" > "$OUT/hybrid/fit_$m.log" 2>&1 &
  pids+=($!)
done
i=0
for m in $MODELS; do
  wait "${pids[$i]}"; echo "fit $m: rc=$? ($((SECONDS - t0)) s)"; tail -n 2 "$OUT/hybrid/fit_$m.log"; i=$((i + 1))
done
rm -f "$OUT/hybrid/eval.csv"
names=()
for m in $MODELS; do
  name=$($PY -c "from benchmarks.hybrid_cifar10 import config_model; print(config_model('$m'))") || continue
  names+=("$name")
  run="$RUNS/cifar10_hybrid_$m"
  [ -f "$run/export.safetensors" ] || { echo "no export for $m"; continue; }
  $PY -m zoo.cli eval "$name" --data cifar10 --checkpoint "$run/export.safetensors" --csv "$OUT/hybrid/eval.csv" \
    ${EVAL_ARGS:-} > "$OUT/hybrid/eval_$m.log" 2>&1; echo "eval $m: rc=$? ($((SECONDS - t0)) s)"
  cp "$run/export.safetensors" "$OUT/hybrid/cifar10_hybrid_$m.safetensors"
  cp "$run/fit_summary.json" "$OUT/hybrid/summary_$m.json" 2>/dev/null
  for v in "$run"/csv/version_*; do cp "$v/metrics.csv" "$OUT/hybrid/curve_${m}_$(basename "$v").csv" 2>/dev/null; done
done
# speed and memory of each model alone on the GPU, after the fits (timm's benchmark step: fwd, CE, bwd, AdamW)
$PY -m zoo.cli bench throughput "${names[@]}" --img-size 32 --batch-size "${BENCH_BATCH:-512}" --mode infer,train \
  --out "$OUT/hybrid" --name hybrid_speed ${BENCH_ARGS:-} > "$OUT/hybrid/bench.log" 2>&1
echo "bench: rc=$? ($((SECONDS - t0)) s)"; tail -n 14 "$OUT/hybrid/bench.log"
$PY -m benchmarks.hybrid_cifar10 --runs "$RUNS" --eval-csv "$OUT/hybrid/eval.csv" --speed "$OUT/hybrid/hybrid_speed.json" \
  --models "$(echo $MODELS | tr ' ' ',')" --out "$OUT/hybrid" > "$OUT/hybrid/table.log" 2>&1
echo "table: rc=$?"; cat "$OUT/hybrid/table.log"
mkdir -p benchmarks/results && cp "$OUT/hybrid/hybrid_cifar10.json" "$OUT/hybrid/hybrid_cifar10.md" benchmarks/results/ 2>/dev/null
echo "total $((SECONDS - t0)) s"
