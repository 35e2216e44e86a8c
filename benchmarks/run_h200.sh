#!/usr/bin/env bash
# Stages of the H200 runs, so each device call is one short command:  bash benchmarks/run_h200.sh STAGE...
#   setup        install the carried wheels (.whl/) into /tmp/site
#   prebuild     start compiling the official CUDA extensions in the background
#   gpu-tests    every test marked gpu (or those under $GPU_TESTS; log gpu-tests-$GPU_TAG when set)
#   bench-scan   selective scan vs mamba_ssm's CUDA kernel (built from .official/)
#   bench-scan-chunks  the same with --chunk in $SCAN_CHUNKS (default "8 16": shorter backward tiles,
#                more stored states) into benchmarks/results/scan_chunk<c>/
#   bench-conv   causal conv1d vs causal-conv1d's CUDA kernel, fused add+RMSNorm vs torch
#   bench-vim    vim_tiny vs deit_tiny across resolutions
#   bench-step   one training step of the CIFAR models: host pace vs GPU work, per scan chunk ($SCAN_CHUNKS)
#   bench-la     linear-attention kernels vs fla ($LA_ARGS, e.g. "--shapes lm --name linear_attention_lm", log tag $LA_TAG)
#   bench-mixers pluggable-mixer ViT across resolutions
#   bench-throughput  the installed `zoo bench throughput` of $THROUGHPUT_MODELS (default "vit_tiny_patch16_224
#                vim_tiny_patch16_224") at 224 and 512 px, inference and training ($THROUGHPUT_ARGS for more)
#   bench-scaling  DDP/FSDP throughput and accuracy at 1..N GPUs of the ViT CIFAR recipe (a several-GPU kind;
#                $SCALING_OPTS for the bench, e.g. "--strategies fsdp --name scaling_fsdp"; $SCALING_ARGS for zoo fit)
#   train-cifar  the CIFAR-10 recipes ($CIFAR_MODELS, default "vit vim") side by side on the one GPU (data from .data/; runs/ kept for --resume)
#   train-audio  the spoken-digit recipe
# The lab (benchmarks/*.py, not installed) runs from the repository root as python3 -m benchmarks.<name>.
# Logs and results land in $OUT (or ./out when run by hand). STAGE_TIMEOUT=seconds caps each stage (default 3600),
# so a slow stage cannot eat the whole device call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ZOO_OFFLINE=1 ZOO_CACHE=/tmp/zoo-cache
DATA=${DATA:-.data}

stage() {
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  # the limit applies to the python process itself (a timeout around this script would leave it running)
  timeout -k 10 "${STAGE_TIMEOUT:-3600}" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
}

for s in "$@"; do
  case $s in
    setup) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
           nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem --format=csv ;;
    prebuild) # compile the official CUDA extensions on the CPUs while the GPU runs the tests
           (python3 -c "from benchmarks.official import load_selective_scan_cuda as f; f('.official')" > "$OUT/prebuild-scan.log" 2>&1 &)
           (python3 -c "from pathlib import Path; from benchmarks.conv_norm import build_official as f; f(Path('.official/causal_conv1d'))" > "$OUT/prebuild-conv.log" 2>&1 &) ;;
    gpu-tests) stage "gpu-tests${GPU_TAG:+-$GPU_TAG}" python3 -m pytest -v -m gpu ${GPU_TESTS:-tests} -p no:cacheprovider --timeout 300 ;;
    bench-scan) stage bench-scan python3 -m benchmarks.selective_scan --official-dir .official ;;
    bench-scan-chunks) for c in ${SCAN_CHUNKS:-8 16}; do
        stage "bench-scan-chunk$c" python3 -m benchmarks.selective_scan --official-dir .official --chunk "$c" \
          --out "benchmarks/results/scan_chunk$c"; done ;;
    bench-conv) stage bench-conv python3 -m benchmarks.conv_norm --official-dir .official/causal_conv1d ;;
    bench-vim) stage bench-vim python3 -m benchmarks.vim_vs_deit ;;
    bench-step) stage bench-step python3 -m benchmarks.train_step --scan-chunks "$(echo ${SCAN_CHUNKS:-32 16 8} | tr ' ' ,)" ${STEP_ARGS:-} ;;
    bench-la) stage "bench-la${LA_TAG:+-$LA_TAG}" python3 -m benchmarks.linear_attention ${LA_ARGS:-} ;;
    bench-mixers) stage bench-mixers python3 -m benchmarks.mixers ;;
    bench-throughput) stage bench-throughput python3 -m zoo.cli bench throughput \
        ${THROUGHPUT_MODELS:-vit_tiny_patch16_224 vim_tiny_patch16_224} --img-size 224,512 --batch-size 64 \
        --mode infer,train --out benchmarks/results --name throughput ${THROUGHPUT_ARGS:-} ;;
    bench-scaling) NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 stage bench-scaling python3 -m benchmarks.scaling \
        --epochs "${SCALING_EPOCHS:-3}" ${SCALING_OPTS:-} -- --data.path "$DATA/cifar10-train.zip" \
        --data.val_path "${VAL_PATH:-$DATA/cifar10-test.zip}" ${SCALING_ARGS:-} ;;
    train-cifar)  # CIFAR_MODELS="vim" trains one alone; INIT_TAG=cifar10 continues from that tag's weights
      for m in ${CIFAR_MODELS:-vit vim}; do
        stage "train-$m" python3 -m zoo.cli fit --config "configs/cifar10_${m}_micro.yaml" \
          --data.path "$DATA/cifar10-train.zip" --data.val_path "${VAL_PATH:-$DATA/cifar10-test.zip}" \
          --trainer.default_root_dir "runs/cifar10_${m}_micro" \
          ${INIT_TAG:+--model.model ${m}_micro_patch4_32.$INIT_TAG --model.pretrained true} ${FIT_ARGS:-} &
      done
      wait ;;
    train-audio) stage train-audio python3 -m zoo.cli fit --config configs/fsdd_vim_audio.yaml \
        --data.path "$DATA/fsdd.zip" --trainer.default_root_dir runs/fsdd_vim_audio ${FIT_ARGS:-} ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
# Results come back as one archive (the device returns at most 8 files).
tar czf "$OUT/results.tgz" benchmarks/results $(find runs -name 'export.safetensors' -o -name 'metrics.csv' -o -name 'config.yaml' 2>/dev/null) 2>/dev/null
ls -la "$OUT"
