#!/usr/bin/env bash
# Flickr8k captioning and easy-VQA on one H200, in one call under 560 s: four fits side by side on the one GPU with
# the same clock (trainer.max_time, bf16-mixed), each validated per epoch:
#   mdlm       the diffusion captioner (configs/flickr8k_caption_mdlm.yaml; answer-only masking, LLaDA-V)
#   mdlm_comp  the same with LaViDa's complementary masking
#   ar         its AR twin (configs/flickr8k_caption_ar.yaml): same tower, network, batch and clock
#   vqa        the diffusion captioner's network on easy-VQA (configs/easyvqa_mdlm.yaml; its own tower, 64 px)
# The caption fits take their image tower from the shipped CLIP tag clip_vit_tiny_d6_minilm_128.flickr8k (in the
# tree, nothing to carry) and keep it frozen (LLaVA-style), so their exports hold only the projector and decoder.
# Then easy-VQA test accuracy (zoo.data.easy_vqa --evaluate) and the caption table (benchmarks/caption.py: the
# 1,000 test images with every caption export; BLEU-1..4, CIDEr, tokens/s, ms/image for 4 sampler settings; both
# diffusion exports, so the table says whether complementary masking helped).
#
# Inputs, carried. Tree + carried files must stay under 64 MiB: the tree is ~19.8 MB (16.9 MB of it shipped weights),
# so the original Flickr8k zips (49.5 MB) do not fit beside it; benchmarks/pack_flickr8k_h200.py makes the copies
# that travel (training JPEGs re-encoded at quality 70: 26.8 MB; the eval zip unchanged, 12.7 MB). The MiniLM zip
# (42 MB) cannot travel either, only its tokenizer files (0.7 MB; the captioners train their own decoder and need
# only the WordPiece split). Carried, 44.4 MB in all:
#   .data/h200cap/                    python -m benchmarks.pack_flickr8k_h200 (from $ZOO_DATA's flickr8k-128-*.zip)
#   .data/minilm-tokenizer/           config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt
#                                       of $ZOO_DATA/all-MiniLM-L6-v2-fp16.zip
#   .whl/jsonargparse-*.whl .whl/docstring_parser-*.whl .whl/typeshed_client-*.whl   (LightningCLI's)
#   .whl/easy_vqa-1.0-py3-none-any.whl                                               (easy-VQA's images, 3.2 MB)
# Before the call, here: du -cb $(git ls-files) .data/h200cap/* .data/minilm-tokenizer/* .whl/{jsonargparse,docstring,typeshed,easy_vqa}* | tail -1
#   (with any untracked, not ignored files) must stay under 67,108,864 bytes.
# Device call (run tool, kind nvidia-h200, timeout_s 600, carry [".data/h200cap", ".data/minilm-tokenizer",
#   ".whl/jsonargparse-4.53.0-py3-none-any.whl", ".whl/docstring_parser-0.18.0-py3-none-any.whl",
#   ".whl/typeshed_client-2.15.0-py3-none-any.whl", ".whl/easy_vqa-1.0-py3-none-any.whl"]):
#   bash benchmarks/train_caption_h200.sh
# Knobs: MAX_TIME (clock per fit, default 00:00:04:30), RUNS_LIST (default "mdlm mdlm_comp ar vqa"), TOWER_FROM (the
# caption fits' tower: a tag or a CLIP export; default the configs' shipped tag), FREEZE_TOWER (default true),
# FIT_ARGS (more zoo fit overrides for the caption fits), TRAIN_TIMEOUT (hard stop of the fits, s, default 345),
# VQA_TIMEOUT (its accuracy, default 60), BENCH (default 1; 0 skips the table), DEADLINE (s after the start by which
# everything ends, default 550: the table's timeout is what is left, at most BENCH_TIMEOUT, default 190), LIMIT (test
# images for the table, default all), ACCEL (default gpu; "cpu" with TINY=1 checks the whole script on a CPU: 32
# training images / 64 easy-VQA images, batch 8, 2 steps of the real networks, an 8-image table).
# Back in $OUT (8 files): export_{mdlm,mdlm_comp,ar,vqa}.safetensors (fp16; best val/loss), caption.{json,md},
# easyvqa.json (test accuracy), caption_runs.tgz (metrics.csv, fit_summary.json, config.yaml, logs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache} ZOO_DATA=${ZOO_DATA:-$PWD/.data/h200cap}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# several fits share the host's cores: cap each one's intra-op threads (16 each oversubscribed the CPU while the fits
# set up and collated), and never let transformers look for the Hub (the device reaches nothing outside)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
TOK=${TOK:-$PWD/.data/minilm-tokenizer}
RUNS_LIST=${RUNS_LIST:-mdlm mdlm_comp ar vqa}
ACCEL=${ACCEL:-gpu}
PY=${PY:-python3}
RUNS=runs/caption_h200
DEADLINE=${DEADLINE:-550}
t0=$SECONDS

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for f in "$ZOO_DATA/flickr8k-128-train.zip" "$ZOO_DATA/flickr8k-128-eval.zip" "$TOK/vocab.txt"; do
  [ -f "$f" ] || { echo "missing input $f (python -m benchmarks.pack_flickr8k_h200; see the header of $0)"; exit 2; }
done
$PY -c "import torch, transformers, jsonargparse; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 2
case " $RUNS_LIST " in *" vqa "*) $PY -c "import easy_vqa" || { echo "easy_vqa missing: carry .whl/easy_vqa-1.0-py3-none-any.whl"; exit 2; };; esac
[ "$ACCEL" = gpu ] && nvidia-smi --query-gpu=name,memory.used --format=csv

tiny=(); vtiny=(); limit=(${LIMIT:+--limit $LIMIT}); bs=(--batch-size 100); vlimit=()
if [ -n "${TINY:-}" ]; then
  steps=(--trainer.max_steps 2 --trainer.max_epochs 1)
  tiny=(--data.init_args.train_subset 32 --data.init_args.val_subset 16 --data.init_args.batch_size 8
        --data.init_args.eval_batch_size 8 "${steps[@]}")
  vtiny=(--data.init_args.train_subset 64 --data.init_args.val_subset 16 --data.init_args.batch_size 8
         --data.init_args.eval_batch_size 16 "${steps[@]}")
  limit=(--limit 8); bs=(--batch-size 4); vlimit=(--limit 16)
fi
tower=(--model.init_args.freeze_tower "${FREEZE_TOWER:-true}")
[ -n "${TOWER_FROM:-}" ] && tower+=(--model.init_args.tower_from "$TOWER_FROM")

for r in $RUNS_LIST; do
  mkdir -p "$RUNS/$r"
  case $r in
    mdlm) args=(--config configs/flickr8k_caption_mdlm.yaml "${tower[@]}" "${tiny[@]}" ${FIT_ARGS:-});;
    mdlm_comp) args=(--config configs/flickr8k_caption_mdlm.yaml --model.init_args.complementary true "${tower[@]}"
                     "${tiny[@]}" ${FIT_ARGS:-});;
    ar) args=(--config configs/flickr8k_caption_ar.yaml "${tower[@]}" "${tiny[@]}" ${FIT_ARGS:-});;
    vqa) args=(--config configs/easyvqa_mdlm.yaml "${vtiny[@]}");;
    *) echo "unknown run $r"; exit 2;;
  esac
  args+=(--trainer.default_root_dir "$RUNS/$r" --trainer.accelerator "$ACCEL" --trainer.max_time "${MAX_TIME:-00:00:04:30}"
         --progress log --data.init_args.tokenizer "$TOK")
  # --config first: jsonargparse applies the overrides after it. max_time: Lightning stops by the clock (the
  # cosine anneals by it too) and exports the best val/loss.
  echo "$(date +%T) start fit $r"
  timeout -k 10 "${TRAIN_TIMEOUT:-345}" $PY -m zoo.cli fit "${args[@]}" > "$RUNS/$r/train.log" 2>&1 &
done
wait
echo "=== training: $((SECONDS - t0)) s"
for r in $RUNS_LIST; do
  echo "--- $r"; grep -E "^[0-9:]+ (epoch|exported|training)" "$RUNS/$r/train.log" | sed -n '1p;$p'
  grep -E "^[0-9:]+ (epoch|exported|training)" "$RUNS/$r/train.log" | tail -n 2
  grep -E "Error|error:" "$RUNS/$r/train.log" | tail -n 3
  [ -f "$RUNS/$r/export.safetensors" ] && cp "$RUNS/$r/export.safetensors" "$OUT/export_$r.safetensors"
done
dev=(--device "$( [ "$ACCEL" = gpu ] && echo cuda || echo cpu )")

if [ -f "$RUNS/vqa/export.safetensors" ]; then
  # default sampler (one answer position a step) and Fast-dLLM's threshold decoder
  timeout -k 5 "${VQA_TIMEOUT:-60}" $PY -m zoo.data.easy_vqa --evaluate "$RUNS/vqa/export.safetensors" "${dev[@]}" \
    "${vlimit[@]}" --tokenizer "$TOK" --steps 4 2 1 --json "$OUT/easyvqa.json" > "$RUNS/vqa_eval.log" 2>&1
  echo "--- easy-VQA test accuracy (rc $?)"; tail -n 4 "$RUNS/vqa_eval.log"
fi

mdlms=$(ls "$RUNS"/mdlm/export.safetensors "$RUNS"/mdlm_comp/export.safetensors 2>/dev/null)
left=$((DEADLINE - (SECONDS - t0) - 10)); [ "$left" -gt "${BENCH_TIMEOUT:-190}" ] && left=${BENCH_TIMEOUT:-190}
if [ "${BENCH:-1}" = 1 ] && [ -f "$RUNS/ar/export.safetensors" ] && [ -n "$mdlms" ] && [ "$left" -gt 20 ]; then
  # one process, the GPU to itself: the AR twin once, then every diffusion export at every sampler setting
  echo "=== table, timeout $left s"
  timeout -k 5 "$left" $PY -m benchmarks.caption --mdlm $mdlms --ar "$RUNS/ar/export.safetensors" \
    "${limit[@]}" "${bs[@]}" "${dev[@]}" --out-dir "$OUT" --name caption > "$RUNS/bench.log" 2>&1
  echo "--- table (rc $?)"; tail -n 2 "$RUNS/bench.log"; tail -n 12 "$OUT/caption.md" 2>/dev/null
fi
tar czf "$OUT/caption_runs.tgz" $(find "$RUNS" -name 'metrics.csv' -o -name 'fit_summary.json' -o -name 'config.yaml' \
  -o -name '*.log' 2>/dev/null)
ls -la "$OUT"
echo "=== total: $((SECONDS - t0)) s"
