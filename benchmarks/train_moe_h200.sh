#!/usr/bin/env bash
# The CIFAR-10 MoE table on ONE H200: the dense vit_micro_patch4_32 and its MoE twins from scratch (token choice
# top-2, expert choice, Soft MoE, DeepSeekMoE), and the upcycled MoE beside the dense ViT continued from the same
# checkpoint (vit_micro_patch4_32.cifar10), all fits side by side on the one GPU with the same recipe
# (configs/cifar10_vit_micro[_moe*].yaml), the same epoch cap and the same clock; then each model's training
# images/s timed alone (zoo bench throughput, batch 512, bf16) and the table (benchmarks/moe_cifar_table.py:
# total / active params, active GMACs, images/s, top-1) into $OUT/moe/cifar10_moe.{json,md}.
#   bash benchmarks/train_moe_h200.sh                        # <= 150 epochs or MAX_TIME (4 min) per fit
#   RECIPES="dense moe" bash benchmarks/train_moe_h200.sh --trainer.max_steps 20   # any zoo fit override
# Inputs: $DATA/cifar10-train.zip and, for test-set top-1, $DATA/cifar10-test.zip (copies of $ZOO_DATA's);
# without the test zip validation runs on 2,000 training images (the table's note says so). zoo fit needs
# jsonargparse, docstring_parser and typeshed_client: wheels in .whl/ are installed when present.
# Device call (run tool, kind nvidia-h200, timeout 600; carry ".data/cifar10-train.zip", ".data/cifar10-test.zip" and
# the three wheels .whl/{jsonargparse,docstring_parser,typeshed_client}-*.whl: all of .whl would pass 64 MiB).
# Env: OUT (default out/), DATA (default .data), RUNS (default runs/moe_h200), MAX_TIME (per fit, default
# 00:00:04:00; the cosine anneals by it), TRAIN_TIMEOUT (hard stop per fit, s, default 330), RECIPES (default
# all: dense moe moe_ec moe_soft moe_ds moe_upcycled dense_continued), ACCEL (gpu; cpu with TINY=1 checks the
# script on a CPU: small subsets, batch 16, no timing alone), THROUGHPUT (default 1), EVAL_ARGS (more zoo eval
# options, e.g. "--subset 2"), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; RUNS=${RUNS:-runs/moe_h200}; DATA=${DATA:-.data}; PY=${PYTHON:-python3}; ACCEL=${ACCEL:-gpu}
mkdir -p "$OUT/moe" "$RUNS"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_DATA="$DATA" ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
RECIPES=${RECIPES:-dense moe moe_ec moe_soft moe_ds moe_upcycled dense_continued}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -f "$DATA/cifar10-train.zip" ] || { echo "missing $DATA/cifar10-train.zip (see the header of $0)"; exit 2; }
val=(); note="top-1 on the CIFAR-10 test set"; evaldata=cifar10; evalsplit=test
if [ ! -f "$DATA/cifar10-test.zip" ]; then
  val=(--data.val_path "$DATA/cifar10-train.zip" --data.val_split train --data.val_subset 2000)
  note="top-1 on 2,000 training images (no test zip): NOT test accuracy"; evaldata="$DATA/cifar10-train.zip"
  evalsplit=train; EVAL_ARGS="${EVAL_ARGS:---subset 200}"
fi
tiny=()
[ -n "${TINY:-}" ] && tiny=(--data.train_subset 64 --data.val_subset 32 --data.batch_size 16 --data.eval_batch_size 32)
[ "$ACCEL" = gpu ] && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
config() { case $1 in dense|dense_continued) echo configs/cifar10_vit_micro.yaml;; *) echo "configs/cifar10_vit_micro_$1.yaml";; esac; }

t0=$SECONDS
# decode the data set once into the cache before the fits start (they would all decode it at the same time)
$PY -m zoo.cli fit --config configs/cifar10_vit_micro.yaml --trainer.accelerator "$ACCEL" "${val[@]}" "${tiny[@]}" \
  --trainer.max_steps 1 --trainer.limit_val_batches 1 --trainer.default_root_dir "$RUNS/_decode" --progress none \
  > "$OUT/moe/decode.log" 2>&1; echo "data decoded: rc=$? ($((SECONDS - t0)) s)"
pids=()
for r in $RECIPES; do
  init=(); [ "$r" = dense_continued ] && init=(--model.model vit_micro_patch4_32.cifar10 --model.pretrained true)
  rm -rf "$RUNS/$r"
  timeout -k 10 "${TRAIN_TIMEOUT:-330}" $PY -m zoo.cli fit --config "$(config "$r")" "${init[@]}" "${val[@]}" \
    --trainer.accelerator "$ACCEL" --trainer.default_root_dir "$RUNS/$r" --trainer.max_time "${MAX_TIME:-00:00:04:00}" \
    --progress log "${tiny[@]}" "$@" > "$OUT/moe/fit_$r.log" 2>&1 &
  pids+=($!)
done
i=0
for r in $RECIPES; do
  wait "${pids[$i]}"; echo "fit $r: rc=$? ($((SECONDS - t0)) s)"; tail -n 2 "$OUT/moe/fit_$r.log"; i=$((i + 1))
done
echo "=== training: $((SECONDS - t0)) s"
if [ "$ACCEL" = gpu ] && [ "${THROUGHPUT:-1}" = 1 ]; then  # each model alone on the GPU, the recipe's batch
  for m in $($PY -c "import sys; from benchmarks.moe_cifar_table import RECIPE_MODEL as R; print(*dict.fromkeys(R[r] for r in sys.argv[1:]))" $RECIPES); do
    timeout -k 10 120 $PY -m zoo.cli bench throughput "$m" --img-size 32 --batch-size 512 --mode train --warmup 5 \
      --iters 20 --out "$RUNS" --name "throughput_$m" > "$OUT/moe/throughput_$m.log" 2>&1; tail -n 2 "$OUT/moe/throughput_$m.log"
  done
fi
for r in $RECIPES; do  # top-1 of the final weights (the fits' last validation may predate the clock's stop)
  [ -f "$RUNS/$r/export.safetensors" ] || continue
  m=$($PY -c "import sys; from benchmarks.moe_cifar_table import RECIPE_MODEL as R; print(R[sys.argv[1]])" "$r")
  rm -f "$RUNS/$r/eval.csv"
  timeout -k 10 120 $PY -m zoo.cli eval "$m" --checkpoint "$RUNS/$r/export.safetensors" --data "$evaldata" \
    --split "$evalsplit" --device "$([ "$ACCEL" = gpu ] && echo cuda || echo cpu)" --csv "$RUNS/$r/eval.csv" \
    ${EVAL_ARGS:-} > "$OUT/moe/eval_$r.log" 2>&1; echo "eval $r: rc=$? $(tail -n 1 "$RUNS/$r/eval.csv" 2>/dev/null | cut -d, -f1-3)"
done
$PY -m benchmarks.moe_cifar_table --runs "$RUNS" --recipes $RECIPES --out "$OUT/moe" \
  --note "same recipe, <= ${MAX_TIME:-00:00:04:00} of training per fit, $(echo $RECIPES | wc -w) fits side by side on one $ACCEL; $note"
for r in $RECIPES; do
  [ -f "$RUNS/$r/export.safetensors" ] && cp "$RUNS/$r/export.safetensors" "$OUT/moe/cifar10_$r.safetensors"
  for v in "$RUNS/$r"/csv/version_*; do cp "$v/metrics.csv" "$OUT/moe/curve_${r}_$(basename "$v").csv" 2>/dev/null; done
done
echo "total $((SECONDS - t0)) s"
