"""DDP on the CPU (gloo): two processes on a global batch give the loss one process gives on it."""
import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.fixture(scope="module")
def dit_config(tmp_path_factory, trained):
    train = {"steps": 3, "batch_size": 8, "ema": None, "ckpt_every": 3, "log_every": 1}
    cfg = {"data": trained[0]["data"], "grain": trained[0]["grain"], "dvae": {"preset": "tiny"},
           "dit": {"size": "tiny", "train": train}, "tracking": {"uri": None}}
    path = tmp_path_factory.mktemp("ddp") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one(dit_config, latent_cache, tmp_path):
    args = ["-m", "d2it.cli", "train", "dit", "--config", str(dit_config), "--latents", str(latent_cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                            env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert two[0] == pytest.approx(one[0], rel=1e-5)  # same samples, same noise, same timesteps
    assert two == pytest.approx(one, rel=1e-4)  # and the same updates after it
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
