#!/usr/bin/env bash
# The GPU check of the performance issue, one prepared script for one CUDA device (about 10
# minutes at XL): `d2it bench` on ImageNet-256 geometry at batch 64 with a profile of one default
# (compiled) step, eager vs compiled, then the largest of the larger batches that fits; each bench
# also reports the per-GPU batch that train.batch_gpu: auto picks there. The log and each bench's
# JSON / Markdown go to OUT.
#   bash benchmarks/gpu_check.sh [OUT]   (OUT default: gpu-check; run from the repo root)
# SIZE (XL), BATCHES ("64 256 128": the first, then the largest that fits), ITERS (10) and
# REPEATS (3) shrink it for a try of the script itself, e.g. SIZE=tiny BATCHES=2 on a CPU.
set -uo pipefail
out=${1:-gpu-check} size=${SIZE:-XL} batches=(${BATCHES:-64 256 128})
mkdir -p "$out"
bench() {
  # 50 sampling steps keep the sampling figure short (it scales with the step count); EffNet
  # features, as Inception's weights cannot be downloaded there
  python3 -m d2it.cli bench --config config/imagenet256.yaml --size "$size" \
    --set sampling.steps=50 --set metrics.extractor=effnet \
    --iters "${ITERS:-10}" --repeats "${REPEATS:-3}" "$@"
}
echo "== $(date +%T) batch ${batches[0]}, profiled" | tee -a "$out/log"
bench --batch "${batches[0]}" --profile --out "$out/bench-${batches[0]}" 2>>"$out/log" \
  | tee -a "$out/log"
for b in "${batches[@]:1}"; do
  echo "== $(date +%T) batch $b" | tee -a "$out/log"
  if bench --batch "$b" --out "$out/bench-$b" 2>>"$out/log" | tee -a "$out/log"; then
    echo "largest batch that fits: $b" | tee -a "$out/log"
    break
  fi
done
echo "== $(date +%T) done" | tee -a "$out/log"
