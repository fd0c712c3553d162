#!/usr/bin/env bash
# GPU smoke test and benchmarks on one CUDA device:
#  1. DiT-XL/2 and D²iT-XL training / sampling throughput at 256 px (bf16 autocast);
#  2. the CPU study's whole chain, shortened, with bf16 training, sampling fp32 and bf16 on the same seeds;
#  3. FD's response to degradations at 2 x 2500 images, and the metric path's cost at 256 px.
#   bash benchmarks/gpu_smoke.sh [OUT]      (OUT default: gpu-smoke; d2it importable from the repo root)
# SIZE (XL), STEPS (1000) and N (5000 training images) shrink it for a check of the script itself.
set -euo pipefail
out=${1:-gpu-smoke} size=${SIZE:-XL} steps=${STEPS:-1000} n=${N:-5000}
mkdir -p "$out"
d2it() { python3 -m d2it.cli "$@"; }
step() { echo "== $(date +%T) $*"; }

step "throughput $size"
python3 benchmarks/stage2_throughput.py --size "$size" --batch 32
python3 benchmarks/stage2_throughput.py --size "$size" --batch 64 --steps 10 || echo "batch 64 failed"

step "config"
python3 - "$out" "$steps" "$n" <<'PY'
import sys, yaml
from d2it.config import load, set_key
out, steps, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = load("config/config.yaml")
for key, value in {
    "data.manifest": f"{out}/synth/manifest.json", "grain.thresholds": f"{out}/synth/thresholds.json",
    "data.num_workers": "auto", "data.synth.n_train": n, "data.synth.n_heldout": n // 5,
    "dvae.train.steps": steps, "dvae.train.batch_size": 64, "dit.train.steps": steps, "d2it.train.steps": steps,
    "grain_model.train.steps": steps // 2, "sample.n": n // 5,
    # EMA 0.999 over 1000 steps would keep 0.999^1000 = 37 % of the initial weights: noise-like samples
    "dvae.train.ema": None, "dit.train.ema": 0.99, "d2it.train.ema": 0.99, "grain_model.train.ema": 0.99,
    "dit.train.batch_size": 128, "d2it.train.batch_size": 128, "grain_model.train.batch_size": 128,
    "sample.batch_size": 500, "tracking.uri": f"sqlite:///{out}/mlflow.db",
    "metrics.reference": "heldout", "metrics.reference_dir": f"{out}/reference", "metrics.extractor": "effnet",
}.items():
    set_key(cfg, key, value)
open(f"{out}/config.yaml", "w").write(yaml.safe_dump(cfg))
PY
c=(--config "$out/config.yaml")

step "data"
d2it data synth "${c[@]}" > /dev/null
d2it grain thresholds "${c[@]}"
step "dvae"
d2it train dvae "${c[@]}" --out "$out/dvae"
d2it eval recon "${c[@]}" --run-dir "$out/dvae" --out "$out/recon.json"
d2it encode "${c[@]}" --run-dir "$out/dvae" --out "$out/latents.pt"
for kind in dit d2it grain; do
  step "train $kind"
  d2it train $kind "${c[@]}" --latents "$out/latents.pt" --out "$out/$kind"
done
for bf16 in false true; do
  step "sample bf16=$bf16"
  d2it sample "${c[@]}" --set sample.bf16=$bf16 --run-dir "$out/d2it" --grain-run "$out/grain" \
    --latents "$out/latents.pt" --out "$out/d2it_bf16_$bf16.npz"
done
d2it sample "${c[@]}" --run-dir "$out/dit" --latents "$out/latents.pt" --out "$out/dit.npz"
python3 - "$out" <<'PY'
import sys, numpy as np
out = sys.argv[1]
a, b = (np.load(f"{out}/d2it_bf16_{x}.npz")["arr_0"].astype(float) for x in ("false", "true"))
print(f"bf16 vs fp32 sampling, same seeds: mean |pixel difference| {np.abs(a - b).mean():.2f} grey levels, "
      f"{(np.abs(a - b) > 16).mean():.1%} of pixels differ by > 16")
PY
step "metrics"
for s in dit d2it_bf16_false d2it_bf16_true; do
  d2it metrics "${c[@]}" --samples "$out/$s.npz" --out "$out/metrics_$s.json"
done
step "fd response"
python3 benchmarks/fd_response.py --config "$out/config.yaml" --n "$n"
step "metrics cost 256 px"
python3 benchmarks/metrics_cost.py --n $((n * 2 / 5)) --reference "$n" --resolution 256
step "done"
