#!/usr/bin/env bash
# Flickr8k CLIP (LiT) on one H200: the ViT, Vim and EfficientViT towers (configs/flickr8k_clip_{vit,vim,efficientvit}.yaml)
# trained side by side on the one GPU with the same recipe and epoch budget (bf16-mixed), then each image tower's
# images/s at 128 px timed alone (zoo bench throughput). Evaluation (retrieval, zero-shot) runs afterwards on
# any machine with the MiniLM zip: zoo eval <export> --data flickr8k --output <dir>.
#
# Inputs, carried (the device call's tree limit is 64 MiB: the train zip and the MiniLM zip cannot travel together,
# so the locked text tower's outputs travel as int8 embeddings instead):
#   .data/flickr8k-128-train.zip                      copy of $ZOO_DATA/flickr8k-128-train.zip
#   .data/flickr8k-train-minilm-int8.safetensors      python -m zoo.vl.embeddings --data flickr8k --split train \
#                                                       --out .data/flickr8k-train-minilm-int8.safetensors
#   .whl/                                             wheels the device image lacks: open_clip_torch, ftfy, wcwidth,
#                                                       jsonargparse, docstring_parser, typeshed_client
# Device call (run tool, kind nvidia-h200, carry [".data/flickr8k-128-train.zip",
#   ".data/flickr8k-train-minilm-int8.safetensors", ".whl"]):   bash benchmarks/train_clip_h200.sh
# Knobs: TOWERS (default "vit vim efficientvit": configs/flickr8k_clip_<tower>.yaml; an entry RUN=TOWER trains that
# tower's recipe as run RUN with the extra overrides of $ARGS_RUN, e.g. TOWERS="vit_micro vit_micro_scratch=vit_micro"
# ARGS_vit_micro_scratch="--model.init_args.tower_init null"; overrides split on spaces), EPOCHS (default: the
# recipes' 50), MAX_TIME (clock budget per run, default 00:00:05:00: a run that has not done its epochs by then
# stops, annealed, and exports; the table says so), THROUGHPUT (default 1; 0 skips the towers' timing, e.g. when
# other work shares the GPU), FIT_ARGS (more zoo fit overrides, every run), TRAIN_TIMEOUT (hard stop, seconds,
# default 390; it must leave room beyond MAX_TIME for set-up: 187 s when easy-VQA fits shared the host, clip r6), ACCEL (default gpu; "cpu" with TINY=1 checks the script on a CPU: 64 images, batch 16, 1 epoch, no
# throughput timing).
# Back in $OUT: export_<tower>.safetensors (image tower + projections, fp16), clip_runs.tgz (curves metrics.csv,
# fit_summary.json, config.yaml, logs, throughput json/md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ZOO_OFFLINE=1 ZOO_CACHE=${ZOO_CACHE:-/tmp/zoo-cache} ZOO_DATA=${ZOO_DATA:-$PWD/.data}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
EMB=${EMB:-.data/flickr8k-train-minilm-int8.safetensors}
TOWERS=${TOWERS:-vit vim efficientvit}
ACCEL=${ACCEL:-gpu}
PY=${PY:-python3}
RUNS=runs/clip_h200

# the carried wheels, installed once per machine (/tmp/site/.zoo-wheels): two scripts sharing a call must not
# reinstall them under each other's running fits
if ls .whl/*.whl >/dev/null 2>&1; then
  if [ ! -f /tmp/site/.zoo-wheels ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 \
      && touch /tmp/site/.zoo-wheels
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for f in "$ZOO_DATA/flickr8k-128-train.zip" "$EMB"; do
  [ -f "$f" ] || { echo "missing input $f (see the header of $0)"; exit 2; }
done
$PY -c "import torch, open_clip, jsonargparse; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'open_clip', open_clip.__version__)"
[ "$ACCEL" = gpu ] && nvidia-smi --query-gpu=name,memory.used --format=csv

tiny=()
[ -n "${TINY:-}" ] && tiny=(--data.init_args.train_subset 64 --data.init_args.batch_size 16 --trainer.max_epochs 1)
epochs=()
[ -n "${EPOCHS:-}" ] && epochs=(--trainer.max_epochs "$EPOCHS")

t0=$SECONDS
runs=()
for spec in $TOWERS; do
  t=${spec%%=*}; cfg=${spec#*=}; runs+=("$t")
  extra=ARGS_$t
  mkdir -p "$RUNS/$t"
  # max_time: Lightning stops by the clock (the cosine anneals by it too) and still exports; timeout is the hard stop
  timeout -k 10 "${TRAIN_TIMEOUT:-390}" $PY -m zoo.cli fit --config "configs/flickr8k_clip_$cfg.yaml" \
    --data.init_args.text_embeddings "$EMB" --trainer.default_root_dir "$RUNS/$t" --trainer.accelerator "$ACCEL" \
    --trainer.max_time "${MAX_TIME:-00:00:05:00}" --progress log "${epochs[@]}" "${tiny[@]}" ${FIT_ARGS:-} ${!extra:-} \
    > "$RUNS/$t/train.log" 2>&1 &
done
wait
echo "=== training: $((SECONDS - t0)) s"
for t in "${runs[@]}"; do
  echo "--- $t"; tail -n 4 "$RUNS/$t/train.log"
  [ -f "$RUNS/$t/export.safetensors" ] && cp "$RUNS/$t/export.safetensors" "$OUT/export_$t.safetensors"
done

if [ "$ACCEL" = gpu ] && [ -z "${TINY:-}" ] && [ "${THROUGHPUT:-1}" = 1 ]; then  # each image tower alone, as the recipes build it
  declare -A TOWER=([vit]="vit_tiny_patch16_224 depth=6" [vim]="vim_tiny_patch16_224 depth=12" [efficientvit]="efficientvit_b0"
                    [vit_micro]="vit_micro_patch4_32 patch_size=16" [vim_micro]="vim_micro_patch4_32 patch_size=16"
                    [vit_micro_p8]="vit_micro_patch4_32 patch_size=8" [vim_micro_p8]="vim_micro_patch4_32 patch_size=8")
  for t in "${runs[@]}"; do
    [ -n "${TOWER[$t]:-}" ] || continue  # a variant of a tower: timed under the tower's own name
    set -- ${TOWER[$t]}; m=$1; shift
    timeout -k 10 60 $PY -m zoo.cli bench throughput "$m" --img-size 128 --batch-size 256 --mode infer,train \
      --warmup 3 --iters 10 \
      --model-kwargs "$@" --out "$RUNS" --name "throughput_$t" > "$RUNS/throughput_$t.log" 2>&1
    tail -n 4 "$RUNS/throughput_$t.log"
  done
fi
tar czf "$OUT/clip_runs.tgz" $(find "$RUNS" -name 'metrics.csv' -o -name 'fit_summary.json' -o -name 'config.yaml' \
  -o -name '*.log' -o -name 'throughput_*.json' -o -name 'throughput_*.md' 2>/dev/null)
ls -la "$OUT"
echo "=== total: $((SECONDS - t0)) s"
