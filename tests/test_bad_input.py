"""Bad input to the CLI: one line `d2it: error: <cause>` naming the file or key, exit code 2, no
traceback, and nothing the command read is changed. Each case breaks a copy of a tiny run."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from d2it import study as studies
from d2it.cli import main
from d2it.data.latents import LatentCache
from d2it.data.manifest import Manifest
from d2it.errors import D2itError
from d2it.files import write_json_atomic
from d2it.sample import RECORDED, planned_record
from d2it.stage2 import run_record
from tests_support import ONE_LINE, cli_outcome, error_outcome, left_behind, tiny_study

pytestmark = pytest.mark.bad_input


@pytest.fixture
def config(trained, tmp_path):
    """The tiny study as a YAML file for `--config`."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(trained[0]))
    return path


def copy(folder, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_error(capsys, *argv) -> str:
    """The message of the one error line the command printed (asserting it is only that)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert cli_outcome(code, err) == ONE_LINE  # beside logs and progress bars, last
    return err.splitlines()[-1].removeprefix("d2it: error: ")


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("what", ["latents", "grain", "labels"])
def test_a_truncated_latent_array_is_named(config, latent_cache, capsys, tmp_path, what):
    cache = copy(latent_cache, tmp_path, "latents")
    array = cache / f"train_{what}.npy"
    cut_in_half(array)
    before = snapshot(cache)
    message = one_error(capsys, "train", "model", "--config", config, "--spec", "dit",
                        "--latents", cache, "--out", tmp_path / "run")
    assert message.startswith(f"{array}: truncated (")
    assert message.endswith("re-encode with `d2it encode`")
    assert snapshot(cache) == before


def test_a_latent_array_of_another_length_than_its_meta_is_named(config, latent_cache, capsys,
                                                                  tmp_path):
    cache = copy(latent_cache, tmp_path, "latents")
    array = cache / "train_labels.npy"
    np.save(array, np.load(array)[:-1])
    message = one_error(capsys, "train", "model", "--config", config, "--spec", "dit",
                        "--latents", cache, "--out", tmp_path / "run")
    assert message.startswith(f"{array}: ")
    assert "rows, meta.json says" in message


def test_a_truncated_cache_meta_is_named(config, latent_cache, capsys, tmp_path):
    cache = copy(latent_cache, tmp_path, "latents")
    cut_in_half(cache / "meta.json")
    message = one_error(capsys, "train", "model", "--config", config, "--spec", "dit",
                        "--latents", cache, "--out", tmp_path / "run")
    assert message.startswith(f"{cache / 'meta.json'}: not a latent cache's meta.json (")


def test_an_edited_cache_meta_is_named_and_a_run_records_its_cache(
        config, latent_cache, capsys, tmp_path):
    """meta.json edited by hand (a scale factor changed) no longer matches its digest; a run
    records the digest of the cache it trained on (run.json's inputs: a folder holding a run of
    other inputs is refused, test_train)."""
    cache = copy(latent_cache, tmp_path, "latents")
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "scale_factor": 1.5}))
    message = one_error(capsys, "train", "model", "--config", config, "--spec", "dit",
                        "--latents", cache, "--out", tmp_path / "run")
    assert message == (f"{cache / 'meta.json'}: changed since the cache was written (its digest "
                       "no longer matches); re-encode with `d2it encode`")
    assert not left_behind(tmp_path / "run")
    record = run_record(yaml.safe_load(config.read_text()), "dit", 0, LatentCache(latent_cache))
    assert record["inputs"] == {"latent_cache": LatentCache(latent_cache).digest}


@pytest.mark.parametrize("content", ["half", "list", "strings", "short"])
def test_a_broken_thresholds_file_is_named(trained, capsys, tmp_path, content):
    study = trained[0]
    thresholds = tmp_path / "thresholds.json"
    shutil.copy(study["grain"]["thresholds"], thresholds)
    table = json.loads(thresholds.read_text())
    if content == "half":
        cut_in_half(thresholds)
    elif content == "strings":
        thresholds.write_text(json.dumps({**table, "values": [str(v) for v in table["values"]]}))
    elif content == "short":
        thresholds.write_text(json.dumps({**table, "values": table["values"][:3]}))
    else:
        thresholds.write_text("[1, 2]\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**study, "grain": {**study["grain"],
                                                         "thresholds": str(thresholds)}}))
    message = one_error(capsys, "train", "dvae", "--config", config, "--out", tmp_path / "run")
    if content in ("strings", "short"):
        assert message == (f"{thresholds}: `percentiles` and `values` must be "
                           f"{len(table['percentiles'])} numbers each; remake it with "
                           "`d2it grain thresholds`")
    else:
        assert message.startswith(f"{thresholds}: not a grain thresholds file (")
    assert not left_behind(tmp_path / "run")  # refused before the run folder is made


def test_runs_of_the_wrong_kind_are_named(config, trained, models, capsys, tmp_path):
    dvae = trained[2].folder
    message = one_error(capsys, "sample", "--config", config, "--run-dir", dvae,
                        "--out", tmp_path / "s.npz")
    assert message == f"{dvae}: a dvae run, expected dit or d2it"
    message = one_error(capsys, "sample", "--config", config, "--run-dir", models["d2it"],
                        "--grain-run", models["dit"], "--out", tmp_path / "s.npz")
    assert message == f"{models['dit']}: a dit run, expected grain"
    message = one_error(capsys, "encode", "--config", config, "--run-dir", models["dit"],
                        "--out", tmp_path / "latents")
    assert message.startswith(f"{models['dit']}: not a DVAE run")
    assert not left_behind(*tmp_path.glob("s*.npz"), tmp_path / "latents")


def test_weights_that_do_not_fit_the_recorded_network_are_named(config, models, capsys, tmp_path):
    """A final.pt whose weights belong to another network (a grain model's, here) than its record
    describes: named, not a 50-line `size mismatch` from load_state_dict."""
    run = copy(models["dit"], tmp_path, "dit")
    final = torch.load(run / "final.pt", weights_only=False)
    other = torch.load(models["grain"] / "final.pt", weights_only=False)
    torch.save({**final, "ema": other["ema"]}, run / "final.pt")
    message = one_error(capsys, "sample", "--config", config, "--run-dir", run,
                        "--out", tmp_path / "s.npz")
    assert message.startswith(f"{run / 'final.pt'}: its weights do not fit the dit network")


def test_an_error_in_a_dataloader_worker_is_one_line(trained, capsys, tmp_path):
    """A truncated image read by a worker process: the worker's message, not its traceback."""
    study = trained[0]
    data = tmp_path / "data"
    shutil.copytree(Path(study["data"]["manifest"]).parent, data)
    manifest = data / "manifest.json"
    broken = data / Manifest.load(manifest).split("train")[0].path
    cut_in_half(broken)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**study, "data": {**study["data"], "manifest": str(manifest),
                                                        "num_workers": 1}}))
    message = one_error(capsys, "grain", "thresholds", "--config", config,
                        "--out", tmp_path / "t.json")
    assert message.startswith(f"{broken}: ")
    assert not left_behind(tmp_path / "t.json")


def test_a_truncated_manifest_is_named(trained, capsys, tmp_path):
    study = trained[0]
    manifest = tmp_path / "manifest.json"
    shutil.copy(study["data"]["manifest"], manifest)
    cut_in_half(manifest)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**study, "data": {**study["data"],
                                                        "manifest": str(manifest)}}))
    message = one_error(capsys, "grain", "thresholds", "--config", config,
                        "--out", tmp_path / "t.json")
    assert message.startswith(f"{manifest}: not a manifest (")
    assert message.endswith("make one with `d2it data synth` or `d2it data prepare`")


def test_a_truncated_run_record_is_named_and_the_run_kept(config, models, capsys, tmp_path):
    run = copy(models["dit"], tmp_path, "dit")
    cut_in_half(run / "run.json")
    before = snapshot(run)
    message = one_error(capsys, "train", "model", "--config", config, "--spec", "dit",
                        "--out", run)
    assert message.startswith(f"{run / 'run.json'}: not a run record (")
    assert snapshot(run) == before


def test_samples_that_are_not_the_planned_set_are_named(tmp_path):
    """The metrics job takes a sample set's settings from the plan and its record from the file
    the plan names: a record of another run or of other settings (a stale or swapped file) is one
    error naming the difference; the planned one is returned as written."""
    plan = studies.plan(studies.resolve(tiny_study(tmp_path, tmp_path / "m.json"), "tiny"))
    found = plan.find_sample_set(plan.table_rows("table2")[1].sample_sets[0].name)  # D²iT
    record = {"kind": "d2it", "run": str(found.run.folder),
              "grain_run": str(found.grain_run.folder),
              **{k: found.settings.get(k) for k in RECORDED}, "fine_fraction": 0.5}
    write_json_atomic(found.record, record)
    assert planned_record(found) == record
    write_json_atomic(found.record, {**record, "cfg_scale": 4.0})
    with pytest.raises(D2itError, match=r"not the planned set .*cfg_scale: 4.0, planned 1") as e:
        planned_record(found)
    assert error_outcome(e.value) == ONE_LINE
    other = plan.table_rows("table2")[0].sample_sets[0]  # DiT's run
    write_json_atomic(found.record, {**record, "run": str(other.run.folder)})
    with pytest.raises(D2itError, match=r"not the planned set .*run: ") as e:
        planned_record(found)
    assert error_outcome(e.value) == ONE_LINE


@pytest.mark.parametrize("argv", [
    ["train", "dvae", "--out", "{blocked}/run"],
    ["sample", "--run-dir", "r", "--out", "{blocked}/s.npz"],
    ["metrics", "--samples", "s.npz", "--out", "{blocked}/m.json"],
    ["data", "synth", "--out", "{blocked}/data"],
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(argv, tmp_path, capsys,
                                                                    monkeypatch):
    """An output under a file, or in a read-only folder, is one line naming it, before the study
    is read for work (here: no data, no runs exist) and before anything is written."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    config = ["--config", "config/quick.yaml"]
    code = main([*[a.format(blocked=blocked) for a in argv], *config])
    err = capsys.readouterr().err
    assert cli_outcome(code, err) == ONE_LINE and "is a file, not a folder" in err
    folder = tmp_path / "read-only"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if Path(path) == folder else real(path, mode)))  # root may write anywhere
    code = main([*[a.format(blocked=folder) for a in argv], *config])
    err = capsys.readouterr().err
    assert cli_outcome(code, err) == ONE_LINE and len(err.strip().splitlines()) == 1
    assert f"the folder {folder} is read-only" in err
    assert not left_behind(*folder.iterdir())
