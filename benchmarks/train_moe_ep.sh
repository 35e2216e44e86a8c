#!/usr/bin/env bash
# Expert-parallel scaling of the CIFAR-10 MoE recipe (configs/cifar10_vit_micro_moe.yaml) on ONE host with several
# GPUs: experts over 1, 2, 4, ... GPUs (--trainer.strategy ep) beside plain DDP, a fixed global batch and epoch
# budget, checks first (the two-process CPU tests of the layer and the strategy), then the table
# (benchmarks/moe_ep_scaling.py: GPUs, experts per GPU, images/s, efficiency, peak memory per GPU, final top-1
# and its change from one GPU) into $OUT/moe_ep/moe_ep_scaling.{json,md}.
#   bash benchmarks/train_moe_ep.sh                              # counts 1,2,4[,8] up to the GPUs present
#   COUNTS=1,2 EPOCHS=2 bash benchmarks/train_moe_ep.sh          # fewer cells; "-- <zoo fit overrides>" pass on
# Device call (run tool, kind nvidia-h200-x4 or -x8, timeout 600; carry ".data/cifar10-train.zip",
# ".data/cifar10-test.zip" and .whl/{jsonargparse,docstring_parser,typeshed_client}-*.whl). NVLink multicast
# stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1). Env: OUT (default out/), DATA (default
# .data), COUNTS, STRATEGIES (default ep,ddp), EPOCHS (default 5), GLOBAL_BATCH (default 512), CHECKS (default 1),
# PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; DATA=${DATA:-.data}; PY=${PYTHON:-python3}
mkdir -p "$OUT/moe_ep"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_DATA="$DATA" ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -f "$DATA/cifar10-train.zip" ] || { echo "missing $DATA/cifar10-train.zip (see the header of $0)"; exit 2; }
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
t0=$SECONDS
if [ "${CHECKS:-1}" = 1 ]; then  # correctness before timings: the sharded layer equals the single-process one
  $PY -m pytest -q -x -p no:cacheprovider tests/backbones/test_moe_parallel.py > "$OUT/moe_ep/checks.log" 2>&1
  rc=$?; tail -n 1 "$OUT/moe_ep/checks.log"; [ $rc = 0 ] || { echo "checks failed: no timings"; exit 1; }
fi
val=()
[ -f "$DATA/cifar10-test.zip" ] || val=(--data.val_path "$DATA/cifar10-train.zip" --data.val_split train --data.val_subset 2000)
counts=(); [ -n "${COUNTS:-}" ] && counts=(--counts "$COUNTS")
$PY -m benchmarks.moe_ep_scaling "${counts[@]}" --strategies "${STRATEGIES:-ep,ddp}" --epochs "${EPOCHS:-5}" \
  --global-batch "${GLOBAL_BATCH:-512}" --run-root runs/moe_ep_scaling --out-dir "$OUT/moe_ep" \
  -- "${val[@]}" "$@" 2>&1 | tee "$OUT/moe_ep/scaling.log" | grep -E "failed|x[0-9]+:|wrote"
cat "$OUT/moe_ep/moe_ep_scaling.md" 2>/dev/null
echo "total $((SECONDS - t0)) s"
