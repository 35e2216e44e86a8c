#!/usr/bin/env bash
# The zoo table's measurements on ONE GPU (issue #22): `zoo bench throughput` of every registered image / audio
# architecture (`zoo table --plan`, models with weights first) at its native size, 512 and 1024 px, inference and
# training, bf16, a batch of about 64 x (224/px)^2 images (512 at 32 px, 64 at 224, 8 from 512 px up). Each call
# times up to CHUNK models at one size; a call that writes no results file (an error other than out of memory,
# which is a row) is retried model by model. The rows are merged into $INTO (default
# benchmarks/results/zoo_throughput.json; a new row replaces the one of the same model, size and mode, so runs of
# parts add up when the file comes back between them) and copied to $OUT. Then, on the CPU in the checkout:
#   cp out/zoo_throughput.{json,md} benchmarks/results/ && zoo table   # zoo.csv, ZOO.md, docs/zoo_*.png
#
#   bash benchmarks/zoo_refresh_h200.sh                                   # every architecture, until DEADLINE
#   MODELS="vim_* mambavision_*" bash benchmarks/zoo_refresh_h200.sh      # some (fnmatch patterns)
#   DEVICE=cpu DTYPE=fp32 SIZES=native MODELS=vit_micro_patch4_32 BENCH_ARGS="--warmup 0 --iters 1 --model-kwargs depth=1" \
#     INTO=/tmp/zoo_throughput.json bash benchmarks/zoo_refresh_h200.sh    # the CPU path (figures mean nothing)
# Env: OUT (default out/), PYTHON (default python3), MODELS, SIZES (default native,512,1024), CHUNK (default 8),
# DEVICE (default cuda), DTYPE (default bf16), BENCH_ARGS (more zoo bench throughput arguments, default
# "--warmup 3 --iters 10"), CALL_TIMEOUT (seconds per zoo bench call, default 300), DEADLINE (seconds for all the
# calls, default 540: a call gets at most the time left, so one 10-minute device call returns its rows; what a
# cut call timed is lost, CHUNK smaller loses less), INTO (the merged results file;
# the (model, size) pairs it holds are skipped, so the same command continues where the last call stopped once
# its zoo_throughput.json is back in benchmarks/results), REDO=1 (time those pairs again).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; PY=${PYTHON:-python3}; INTO=${INTO:-benchmarks/results/zoo_throughput.json}
mkdir -p "$OUT/zoo"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
t0=$SECONDS

bench() {  # bench NAME PX BATCH MODEL...: one zoo bench throughput call within the time left; true when it wrote NAME.json
  local name=$1 px=$2 batch=$3; shift 3
  local left=$(( ${DEADLINE:-540} - (SECONDS - t0) ))
  (( left >= 30 )) || { echo "  deadline: not timed at $px px: $*"; return 1; }
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout -k 10 "$(( left < ${CALL_TIMEOUT:-300} ? left : ${CALL_TIMEOUT:-300} ))" "$PY" -m zoo.cli bench throughput "$@" \
    --img-size "$px" --batch-size "$batch" --mode infer,train --dtype "${DTYPE:-bf16}" --device "${DEVICE:-cuda}" \
    ${BENCH_ARGS:---warmup 3 --iters 10} --out "$OUT/zoo" --name "$name" < /dev/null > "$OUT/zoo/$name.log" 2>&1
  local rc=$?
  echo "  $name: $px px, batch $batch, rc=$rc ($((SECONDS - t0)) s): $*"
  [ -f "$OUT/zoo/$name.json" ] || { tail -n 3 "$OUT/zoo/$name.log"; return 1; }
}

missing=(--missing "$INTO"); [ -n "${REDO:-}" ] && missing=()  # what $INTO already holds is not timed again
set -f  # MODELS holds patterns for zoo table, not for the shell
# shellcheck disable=SC2086
plan=$("$PY" -m zoo.cli table --plan --sizes "${SIZES:-native,512,1024}" --chunk "${CHUNK:-8}" ${MODELS:+--models $MODELS} \
  "${missing[@]}") || { echo "zoo table --plan failed"; exit 1; }
set +f
[ -n "$plan" ] || { echo "nothing to time: $INTO holds every (model, size) asked for (REDO=1 times them again)"; exit 0; }
n=0
while read -r px batch models; do
  [ -n "$px" ] || continue
  n=$((n + 1))
  # shellcheck disable=SC2086
  bench "zoo_${n}_${px}" "$px" "$batch" $models && continue
  [[ $models == *" "* ]] && (( ${DEADLINE:-540} - (SECONDS - t0) >= 30 )) || continue
  for m in $models; do  # one model's error must not cost the others their rows
    bench "zoo_${n}_${px}_$m" "$px" "$batch" "$m"
  done
done <<< "$plan"

shopt -s nullglob
parts=("$OUT"/zoo/zoo_*.json)
# the calls' logs and files as one archive (the device returns a few files)
tar czf "$OUT/zoo_calls.tgz" -C "$OUT" zoo
if [ ${#parts[@]} -eq 0 ]; then rm -rf "$OUT/zoo"; echo "nothing measured"; exit 1; fi
"$PY" -m zoo.cli table --merge "${parts[@]}" --into "$INTO" || exit 1
rm -rf "$OUT/zoo"
cp "$INTO" "${INTO%.json}.md" "$OUT/"
echo "total $((SECONDS - t0)) s; rows in $OUT/$(basename "$INTO"); then: zoo table"
