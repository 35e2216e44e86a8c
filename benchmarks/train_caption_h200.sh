#!/usr/bin/env bash
# Flickr8k captioning on one H200: the diffusion captioner (configs/flickr8k_caption_mdlm.yaml), the same with
# LaViDa's complementary masking, and the AR twin (configs/flickr8k_caption_ar.yaml) trained side by side on the one
# GPU with the same tower, network, batch and clock (trainer.max_time, bf16-mixed), each validated per epoch on the
# 1,000 dev images; then benchmarks/caption.py captions the 1,000 test images with every export (BLEU-1..4, CIDEr,
# tokens/s, ms/image for the sampler settings; both diffusion exports, so the table says whether complementary
# masking helped) into caption.{json,md}.
#
# Inputs, carried (the device call's tree + carried files must stay under 64 MiB: the two Flickr8k zips (49.4 MB)
# travel, the MiniLM zip (42 MB) cannot, so only its tokenizer files do (0.7 MB, no weights: the captioners train
# their own text decoder and only need the WordPiece split); only the wheels the fits need):
#   .data/flickr8k-128-train.zip      copy of $ZOO_DATA/flickr8k-128-train.zip
#   .data/flickr8k-128-eval.zip       copy of $ZOO_DATA/flickr8k-128-eval.zip (dev: validation, test: the table)
#   .data/minilm-tokenizer/           config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt
#                                       of $ZOO_DATA/all-MiniLM-L6-v2-fp16.zip
#   .whl/jsonargparse-*.whl .whl/docstring_parser-*.whl .whl/typeshed_client-*.whl   (LightningCLI's)
# Device call (run tool, kind nvidia-h200, carry [".data/flickr8k-128-train.zip", ".data/flickr8k-128-eval.zip",
#   ".data/minilm-tokenizer", ".whl/jsonargparse-4.53.0-py3-none-any.whl", ".whl/docstring_parser-0.18.0-py3-none-any.whl",
#   ".whl/typeshed_client-2.15.0-py3-none-any.whl"]):   bash benchmarks/train_caption_h200.sh
# Knobs: MAX_TIME (clock per run, default 00:00:04:30: with the data decode, the table and the start the
# whole call stays inside the device's 10-minute limit), RUNS_LIST (default "mdlm mdlm_comp ar"), TOWER_FROM (a CLIP
# export whose image tower initialises every run's), FIT_ARGS (more zoo fit overrides), TRAIN_TIMEOUT (hard stop,
# seconds, default 360), BENCH (default 1; 0 skips the table), BENCH_TIMEOUT (default 180 s), LIMIT (test images for the table, default all),
# ACCEL (default gpu; "cpu" with TINY=1 checks the script on a CPU: the tiny test captioner, 32 images, batch 8,
# 2 steps, an 8-image table).
# Back in $OUT: export_<run>.safetensors (fp16; best val/loss), caption.{json,md}, caption_runs.tgz (metrics.csv,
# fit_summary.json, config.yaml, logs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache} ZOO_DATA=${ZOO_DATA:-$PWD/.data}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
TOK=${TOK:-$PWD/.data/minilm-tokenizer}
RUNS_LIST=${RUNS_LIST:-mdlm mdlm_comp ar}
ACCEL=${ACCEL:-gpu}
PY=${PY:-python3}
RUNS=runs/caption_h200

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for f in "$ZOO_DATA/flickr8k-128-train.zip" "$ZOO_DATA/flickr8k-128-eval.zip" "$TOK/vocab.txt"; do
  [ -f "$f" ] || { echo "missing input $f (see the header of $0)"; exit 2; }
done
$PY -c "import torch, transformers, jsonargparse; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 2
[ "$ACCEL" = gpu ] && nvidia-smi --query-gpu=name,memory.used --format=csv

tiny=(); limit=(${LIMIT:+--limit $LIMIT}); bs=(--batch-size 100)
if [ -n "${TINY:-}" ]; then
  tiny=(--data.init_args.train_subset 32 --data.init_args.val_subset 16 --data.init_args.batch_size 8
        --trainer.max_steps 2 --trainer.max_epochs 1)
  limit=(--limit 8); bs=(--batch-size 4)
fi
tower=(); [ -n "${TOWER_FROM:-}" ] && tower=(--model.init_args.tower_from "$TOWER_FROM")

t0=$SECONDS
for r in $RUNS_LIST; do
  mkdir -p "$RUNS/$r"
  case $r in
    mdlm) cfg=configs/flickr8k_caption_mdlm.yaml; extra=();;
    mdlm_comp) cfg=configs/flickr8k_caption_mdlm.yaml; extra=(--model.init_args.complementary true);;
    ar) cfg=configs/flickr8k_caption_ar.yaml; extra=();;
    *) echo "unknown run $r"; exit 2;;
  esac
  [ -n "${TINY:-}" ] && extra+=(--model.init_args.model "$( [ $r = ar ] && echo caption_ar_tiny_test || echo caption_mdlm_tiny_test )")
  # max_time: Lightning stops by the clock (the cosine anneals by it too) and exports the best val/loss
  timeout -k 10 "${TRAIN_TIMEOUT:-360}" $PY -m zoo.cli fit --config "$cfg" --data.init_args.tokenizer "$TOK" \
    --trainer.default_root_dir "$RUNS/$r" --trainer.accelerator "$ACCEL" --trainer.max_time "${MAX_TIME:-00:00:04:30}" \
    --progress log "${extra[@]}" "${tower[@]}" "${tiny[@]}" ${FIT_ARGS:-} > "$RUNS/$r/train.log" 2>&1 &
done
wait
echo "=== training: $((SECONDS - t0)) s"
for r in $RUNS_LIST; do
  echo "--- $r"; tail -n 3 "$RUNS/$r/train.log"
  [ -f "$RUNS/$r/export.safetensors" ] && cp "$RUNS/$r/export.safetensors" "$OUT/export_$r.safetensors"
done

mdlms=$(ls "$RUNS"/mdlm/export.safetensors "$RUNS"/mdlm_comp/export.safetensors 2>/dev/null)
if [ "${BENCH:-1}" = 1 ] && [ -f "$RUNS/ar/export.safetensors" ] && [ -n "$mdlms" ]; then
  dev=(--device "$( [ "$ACCEL" = gpu ] && echo cuda || echo cpu )")
  # one process, the GPU to itself: the AR twin once, then every diffusion export at every sampler setting
  timeout -k 10 "${BENCH_TIMEOUT:-180}" $PY -m benchmarks.caption --mdlm $mdlms --ar "$RUNS/ar/export.safetensors" \
    "${limit[@]}" "${bs[@]}" "${dev[@]}" --out-dir "$OUT" --name caption > "$RUNS/bench.log" 2>&1
  echo "--- table (rc $?)"; tail -n 2 "$RUNS/bench.log"; tail -n 10 "$OUT/caption.md" 2>/dev/null
fi
tar czf "$OUT/caption_runs.tgz" $(find "$RUNS" -name 'metrics.csv' -o -name 'fit_summary.json' -o -name 'config.yaml' \
  -o -name '*.log' 2>/dev/null)
ls -la "$OUT"
echo "=== total: $((SECONDS - t0)) s"
