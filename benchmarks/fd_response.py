"""How FD responds on the embedded dataset at a size where its small-sample bias is small: two
disjoint halves of the training split against each other, and against degraded copies of the second
half (Gaussian blur and noise, five strengths each).

    python benchmarks/fd_response.py [--config config/cpu.yaml] [--n 4000]
"""
import argparse

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics
from tqdm import tqdm

from d2it import study as studies
from d2it.data.folder import ImageFolderDataset
from d2it.data.manifest import Manifest
from d2it.metrics.degrade import LEVELS
from d2it.metrics.evaluate import extract, frechet_distance
from d2it.metrics.extractors import resolve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="config/cpu.yaml", help="study config")
    p.add_argument("--n", type=int, default=4000, help="images of the training split (two halves)")
    args = p.parse_args()
    cfg = studies.load(args.config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    extractor = resolve(cfg["metrics"])
    data = cfg["data"]
    dataset = ImageFolderDataset(Manifest.load(data["manifest"]), "train", data["resolution"])
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    picked = order[:args.n]  # drawn from all classes
    images = torch.stack([dataset[i][0] for i in tqdm(picked.tolist(), desc="load", unit="img")])
    a, b = images[0::2], images[1::2]

    def stats(x):
        features = extract(x, extractor, cfg["metrics"]["batch_size"], device)["pool"]
        return fid_features_to_statistics(features)

    ref = stats(a)
    print(f"FD on {extractor.name} features, {len(a)} vs {len(b)} images of {data['manifest']}")
    print(f"  half A vs itself      {frechet_distance(ref, ref):9.3f}")
    print(f"  half A vs half B      {frechet_distance(ref, stats(b)):9.3f}")
    for degrade, levels in LEVELS.items():
        for level in levels:
            fd = frechet_distance(ref, stats(degrade(b, level)))
            print(f"  half A vs {degrade.__name__:5} {level:<5} {fd:9.3f}")


if __name__ == "__main__":
    main()
