"""Config validation: defaults, unknown keys, bad values, consistency, and the workflow's DAG."""
import subprocess
import sys

import pytest
import yaml

from d2it import config
from d2it.errors import D2itError
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_default_config_validates_and_fills_paper_defaults():
    cfg = config.load(REPO / "config" / "config.yaml")
    assert cfg["grain"]["sigma"] == 0.01 and cfg["dvae"]["kl_weight"] == 1e-6
    assert cfg["dvae"]["train"]["weight_decay"] == 0.0  # filled from the schema inside $defs


def test_shared_definition_takes_its_own_default_and_rejects_bad_values():
    cfg = config.validate({})
    assert cfg["data"]["num_workers"] == 0 and cfg["metrics"]["num_workers"] == "auto"
    assert config.validate({"data": {"num_workers": "auto"}})["data"]["num_workers"] == "auto"
    with pytest.raises(D2itError, match=r"metrics\.num_workers: 'many' is not valid"):
        config.validate({"metrics": {"num_workers": "many"}})


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"grain": {"fine_ratoi": 0.5}}))
    with pytest.raises(D2itError, match=r"c\.yaml: grain: .*'fine_ratoi' was unexpected"):
        config.load(path)


def test_fine_ratio_outside_unit_interval_is_named():
    with pytest.raises(D2itError, match=r"grain\.fine_ratio: 1\.5 is greater than the maximum of 1"):
        config.load(REPO / "config" / "config.yaml", ["grain.fine_ratio=1.5"])
    with pytest.raises(D2itError, match=r"grain\.fine_ratio: -0\.2 is less than the minimum of 0"):
        config.load(REPO / "config" / "config.yaml", ["grain.fine_ratio=-0.2"])


def test_unknown_override_and_inconsistent_region():
    with pytest.raises(D2itError, match="unknown config key 'grain.ratio'"):
        config.load(REPO / "config" / "config.yaml", ["grain.ratio=0.5"])
    with pytest.raises(D2itError, match="grain.region = 8 must be one coarse latent cell"):
        config.load(REPO / "config" / "config.yaml", ["grain.region=8"])


def test_cli_reports_one_line_error_and_exit_code_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dvae: {preset: huge}\n")
    proc = subprocess.run([sys.executable, "-m", "d2it.cli", "grain", "thresholds", "--config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("d2it: error:") and "dvae.preset: 'huge' is not one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_workflow_dag_resolves():
    snakemake = Path(sys.executable).parent / "snakemake"
    targets = ["results/dvae_recon.csv", *(f"results/table{n}.csv" for n in (2, 3, 4, 5)), "results/fig3.png",
               "results/fig4.png"]
    proc = subprocess.run([snakemake, "-n", *targets], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("name", ["ffhq256.yaml", "imagenet256.yaml"])
def test_paper_configs_validate(name):
    cfg = config.load(REPO / "config" / name)
    assert cfg["data"]["resolution"] == 256 and cfg["grain"]["region"] == 16 and cfg["grain"]["bins"] == 256


def test_yaml_aliases_do_not_couple_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dit: {train: &t {steps: 5}}\nd2it: {train: *t}\n")
    cfg = config.load(path, ["dit.train.steps=9"])
    assert cfg["dit"]["train"]["steps"] == 9 and cfg["d2it"]["train"]["steps"] == 5
