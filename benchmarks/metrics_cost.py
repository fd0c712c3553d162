"""Cost of the metric path on this machine: feature-extraction images/s and the wall time of a
2K-sample evaluation (FD with bootstrap, IS, KID, precision/recall) against a 5K reference.

    python benchmarks/metrics_cost.py [--n 2000] [--reference 5000] [--resolution 32]
"""
import argparse
import time

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics

from d2it import config
from d2it.metrics.evaluate import compare, extract
from d2it.metrics.extractors import resolve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reference", type=int, default=5000)
    p.add_argument("--resolution", type=int, default=32)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config.validate({"name": "metrics-cost"})["metrics"]  # the schema's defaults
    extractor = resolve(cfg)
    g = torch.Generator().manual_seed(0)
    shape = (3, args.resolution, args.resolution)
    generated = torch.randint(0, 256, (args.n, *shape), dtype=torch.uint8, generator=g)
    reference = torch.randint(0, 256, (args.reference, *shape), dtype=torch.uint8, generator=g)

    start = time.perf_counter()
    ref = extract(reference, extractor, cfg["batch_size"], device)["pool"]
    ref_s = time.perf_counter() - start
    print(f"{extractor.name} on {device}, {torch.get_num_threads()} threads: "
          f"{args.reference / ref_s:.1f} images/s ({args.reference} images in {ref_s:.1f} s)")
    start = time.perf_counter()
    feats = extract(generated, extractor, cfg["batch_size"], device)
    ref_stats = {**fid_features_to_statistics(ref), "features": ref[:cfg["reference_features"]]}
    result = compare(feats, ref_stats, extractor, cfg, cfg["seed"])
    print(f"{args.n}-sample evaluation (features + FD with {cfg['bootstrap']} bootstrap rounds, "
          f"IS, KID, P/R): {time.perf_counter() - start:.1f} s; keys {sorted(result)}")


if __name__ == "__main__":
    main()
