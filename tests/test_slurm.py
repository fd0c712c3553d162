"""The SLURM profile for real: the stage-1 table of a tiny study, every job submitted to the
single-node cluster that `.ci/slurm-local` starts (CI starts it; elsewhere the test is skipped)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.e2e  # Snakemake, torchrun or SLURM: subprocesses

REPO = Path(__file__).resolve().parents[1]


def slurm_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    return "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                    text=True).stdout


@pytest.mark.skipif(not slurm_idle(),
                    reason="no idle SLURM node (start one with `bash .ci/slurm-local`)")
def test_stage1_table_through_slurm(tmp_path):
    (tmp_path / "slurm.yaml").write_text(yaml.safe_dump({
        "name": "slurm",
        "data": {"manifest": "data/manifest.json", "resolution": 32, "classes": 10,
                 "synth": {"n_train": 40, "n_heldout": 8}},
        "grain": {"region": 4, "thresholds": "data/thresholds.json"},
        "dvae": {"preset": "tiny", "perceptual": "effnet",
                 "train": {"steps": 4, "batch_size": 4, "ckpt_every": 2, "log_every": 2,
                           "ema": None}},
        "metrics": {"extractor": "effnet"}, "tracking": {"uri": None},
        "recon": {"fine_ratios": [0.5]}}))
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([snakemake, "results/slurm/dvae_recon.csv", "-s", REPO / "Snakefile",
                           "--directory", tmp_path, "--configfile", tmp_path / "slurm.yaml",
                           "--workflow-profile", REPO / "workflow" / "profiles" / "slurm-local"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    submitted = [line for line in proc.stderr.splitlines() if "submitted with SLURM jobid" in line]
    # synth, thresholds, DVAE, eval: each a SLURM job
    assert len(submitted) >= 4, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "slurm" / "dvae_recon.csv")
    assert list(table["fine_ratio"]) == [0.5] and table["train_steps"].item() == 4
