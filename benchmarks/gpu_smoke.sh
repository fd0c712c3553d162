#!/usr/bin/env bash
# GPU smoke test and benchmarks on one CUDA device:
#  1. DiT-XL/2 and D²iT-XL training / sampling throughput at 256 px (bf16 autocast);
#  2. the CPU study's whole chain, shortened (its own study: specs dit, d2it and the grain spec dgt
#     on DVAEs of fine ratio 1.0 and 0.5), with bf16 training, sampling fp32 and bf16 on the same
#     seeds;
#  3. FD's response to degradations at 2 x 2500 images, and the metric path's cost at 256 px.
#   bash benchmarks/gpu_smoke.sh [OUT]   (OUT default: gpu-smoke; run from the repo root)
# SIZE (XL), STEPS (1000) and N (5000 training images; at least 128, the training batch) shrink it
# for a check of the script itself, e.g. SIZE=tiny STEPS=4 N=128 on a CPU.
set -euo pipefail
out=${1:-gpu-smoke} size=${SIZE:-XL} steps=${STEPS:-1000} n=${N:-5000}
mkdir -p "$out"
d2it() { python3 -m d2it.cli "$@"; }
step() { echo "== $(date +%T) $*"; }

step "bench $size"
iters=$((steps < 10 ? steps : 10))  # STEPS below 10 shortens the timing too
bench() {  # ImageNet-256 geometry; EffNet features (no Inception weights there); 50 steps
  d2it bench --config config/imagenet256.yaml --set metrics.extractor=effnet \
    --set sampling.steps=50 --size "$size" --iters "$iters" "$@"
}
bench --batch 32 --out "$out/bench-32"
bench --batch 64 --out "$out/bench-64" || echo "batch 64 failed"

step "config"
python3 - "$out" "$steps" "$n" <<'PY'
import copy, sys, yaml
from d2it import study
from d2it.config import set_key
out, steps, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = yaml.safe_load(open("config/cpu.yaml"))
cfg.update(name="gpu-smoke", paths={"runs": f"{out}/runs", "results": f"{out}/results"},
           specs={k: cfg["specs"][k] for k in ("dit", "d2it", "dgt")},
           tables={"smoke": {"rows": {"dit": {"spec": "dit"}, "d2it": {"spec": "d2it"}}}},
           figures={}, recon={"fine_ratios": [0.5, 1.0], "seeds": [0]})
for key, value in {
    "data.manifest": f"{out}/synth/manifest.json",
    "grain.thresholds": f"{out}/synth/thresholds.json",
    "data.num_workers": "auto", "data.synth.n_train": n, "data.synth.n_heldout": n // 5,
    "dvae.train.steps": steps, "dvae.train.batch_size": 64, "train.steps": steps,
    "specs.dgt.train.steps": max(1, steps // 2), "sampling.n": n // 5,
    # EMA 0.999 over 1000 steps would keep 0.999^1000 = 37 % of the initial weights: noisy samples
    "dvae.train.ema": None, "train.ema": 0.99, "train.batch_size": 128,
    "sampling.batch_size": 500, "tracking.uri": f"sqlite:///{out}/mlflow.db",
    "metrics.reference": "heldout", "metrics.reference_dir": f"{out}/reference",
    "metrics.extractor": "effnet",
}.items():
    set_key(cfg, key, value)
study.resolve(copy.deepcopy(cfg), f"{out}/config.yaml")  # fail here, not halfway through the chain
open(f"{out}/config.yaml", "w").write(yaml.safe_dump(cfg, sort_keys=False))
PY
c=(--config "$out/config.yaml")
d2it study plan "${c[@]}" > "$out/plan.jsonl"
planned() {  # planned ROW FIELD: the first folder FIELD of a smoke-table row in the study's plan
  python3 -c 'import json, sys
rows = {r["row"]: r for r in map(json.loads, open(sys.argv[1]))}
print(rows[sys.argv[2]][sys.argv[3]][0])' "$out/plan.jsonl" "$1" "$2"
}
dit_run=$(planned dit run_dirs) d2it_run=$(planned d2it run_dirs)
grain_run=$(planned d2it grain_run_dirs)

step "data"
d2it data synth "${c[@]}" > /dev/null
d2it grain thresholds "${c[@]}"
for r in 0.5 1.0; do  # D²iT's DVAE and the fixed-rate VAE of the DiT baseline
  step "dvae r=$r"
  d2it train dvae "${c[@]}" --fine-ratio $r --seed 0
  d2it eval recon "${c[@]}" --fine-ratio $r --seed 0 --out "$out/recon_r$r.json"
  d2it encode "${c[@]}" --fine-ratio $r --seed 0
done
for spec in dit d2it; do
  step "train $spec"
  d2it train model "${c[@]}" --spec $spec --seed 0
done
step "train dgt"
d2it train model "${c[@]}" --spec dgt --seed 0 --fine-ratio 0.5  # the grain maps D²iT trains on
for bf16 in false true; do
  step "sample bf16=$bf16"
  d2it sample "${c[@]}" --set sampling.bf16=$bf16 --run-dir "$d2it_run" --grain-run "$grain_run" \
    --out "$out/d2it_bf16_$bf16.npz"
done
d2it sample "${c[@]}" --run-dir "$dit_run" --out "$out/dit.npz"
python3 - "$out" <<'PY'
import sys, numpy as np
out = sys.argv[1]
a, b = (np.load(f"{out}/d2it_bf16_{x}.npz")["arr_0"].astype(float) for x in ("false", "true"))
print(f"bf16 vs fp32 sampling, same seeds: mean |pixel difference| {np.abs(a - b).mean():.2f} "
      f"grey levels, {(np.abs(a - b) > 16).mean():.1%} of pixels differ by > 16")
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
