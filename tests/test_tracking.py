"""MLflow tracking as parallel jobs meet it (a fresh store opened by several jobs at once, an
unreachable server, a metrics file cut off mid-line by a kill, a store whose creation was
killed) and as a researcher reads it (evaluation runs, the study's run and view)."""
import json
import subprocess
import sys
import time

import pytest

from d2it.tracking import Tracker
from tests_support import HELD, saw

JOB = """
import sys
from pathlib import Path
from d2it.tracking import Tracker
out, uri, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
out.mkdir(parents=True)
tracker = Tracker(out, uri, "exp", name, {"job": name}, {}, 0, study="s")
tracker.log({"loss": 1.0}, 1)
tracker.finish()
print("on" if tracker.client else "off")
"""


@pytest.mark.e2e
def test_jobs_starting_together_on_a_fresh_store_all_track(tmp_path):
    """Four jobs open a sqlite store that does not exist yet at the same moment: each creates or
    finds the store, the experiment and the study's one parent run, and logs its child run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / f"job{i}"), uri,
                              f"job{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(4)]
    results = [job.communicate(timeout=300) for job in jobs]
    assert [out.strip() for out, _ in results] == ["on"] * 4, [err[-2000:] for _, err in results]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    parents = [r.info.run_id for r in runs if r.data.tags.get("d2it.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0]]
    assert sorted(r.data.params["job"] for r in children) == [f"job{i}" for i in range(4)]
    assert all(r.data.metrics["loss"] == 1.0 for r in children)


def test_an_unreachable_server_costs_seconds_and_the_json_keeps_every_number(tmp_path):
    """Nothing listens on port 9: tracking turns off after its bounded retries (before: 259 s
    of unbounded ones) and the metrics still reach the JSON file."""
    start = time.monotonic()
    tracker = Tracker(tmp_path, "http://127.0.0.1:9", "exp", "run", {}, {}, 0)
    assert time.monotonic() - start < 60 and tracker.client is None
    tracker.log({"loss": 0.5}, 1)
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 0.5}


def test_a_metrics_line_cut_off_by_a_kill_does_not_block_the_resume(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    Tracker(tmp_path, None, "exp", "run", {}, {}, resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:2]


def test_an_evaluation_run_shows_its_row_fd_interval_and_recon(tmp_path):
    """A metrics child run: named by its row and FD with its interval (what the runs list shows
    with no column added), metrics under protocol-free names with `_lo` / `_hi`, the DVAE's
    reconstruction scores, the protocol as a param."""
    from mlflow.tracking import MlflowClient

    from d2it.metrics.job import _log_evaluation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = {"name": "s", "tracking": {"uri": uri, "experiment": "t"}}
    values = {"fd_effnet_1k": 214.62, "fd_effnet_1k_ci95": [208.93, 220.31], "class_acc": 0.5,
              "class_acc_ci95": [0.46, 0.54], "is_effnet_1k": 2.0}
    names = {"fd": "fd_effnet_1k", "is": "is_effnet_1k", "class_acc": "class_acc"}
    context = {"uses": ["table2/dit_xl", "fig6"], "spec": "dit",
               "recon": {"rfd": 50.9, "psnr_db": 24.9}}
    _log_evaluation(study, tmp_path / "dit-x.npz", values, names, "1000 samples vs train",
                    {"kind": "dit", "seed": 0, "run": "runs/s/dit/x", "grain_run": None}, context)
    client = MlflowClient(uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("t").experiment_id])
              if r.data.tags.get("d2it.role") == "evaluation"]
    assert run.info.run_name == "table2/dit_xl fig6 dit: FD 214.6 [208.9, 220.3]"
    assert run.data.metrics == {"fd": 214.62, "fd_lo": 208.93, "fd_hi": 220.31, "is": 2.0,
                                "class_acc": 0.5, "class_acc_lo": 0.46, "class_acc_hi": 0.54,
                                "recon_rfd": 50.9, "recon_psnr_db": 24.9}
    assert run.data.params["protocol"] == "1000 samples vs train"
    assert run.data.params["kind"] == "dit" and "grain_run" not in run.data.params
    assert run.data.tags["d2it.run"] == "runs/s/dit/x" and "d2it.grain_run" not in run.data.tags
    assert run.data.params["metric_names"].startswith("fd=fd_effnet_1k, is=is_effnet_1k")
    assert run.data.tags["d2it.uses"] == "table2/dit_xl, fig6"
    assert run.data.tags["d2it.spec"] == "dit"


def test_the_study_run_holds_its_settings_and_what_it_made(tmp_path, caplog):
    """The parent run: the study's settings as params at the start (kept when a rerun changes
    one, which is named), its outputs as artifacts at the end, the experiment opened in the runs
    view rather than MLflow 3's GenAI view."""
    from mlflow.tracking import MlflowClient

    from d2it.tracking import finish, prepare

    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t"}
    prepare(tracking, "s", {"name": "s", "train": {"steps": 5, "lr": 1e-3}})
    table = tmp_path / "table2.csv"
    table.write_text("row,fd\n")
    finish(tracking, "s", "FINISHED", [table, tmp_path / "not-made.png"])
    prepare(tracking, "s", {"name": "s", "train": {"steps": 9, "lr": 1e-3}})
    assert "keeps its first params; changed since: train.steps" in caplog.text
    client = MlflowClient(tracking["uri"])
    experiment = client.get_experiment_by_name("t")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.d2it"])  # ?viewStateShareKey=d2it
    assert {"metrics.`fd`", "metrics.`fd_lo`", "metrics.`fd_hi`"} <= set(view["selectedColumns"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "d2it.role"}]
    (parent,) = client.search_runs([experiment.experiment_id])
    assert parent.data.params == {"name": "s", "train.steps": "5", "train.lr": "0.001"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["table2.csv"]
    assert parent.data.tags["d2it.commit"] and parent.info.status == "RUNNING"


@pytest.mark.bad_input
def test_a_store_whose_creation_was_killed_is_made_again(tmp_path, monkeypatch):
    """MLflow builds a new sqlite store in many migrations; a process killed halfway (Snakemake
    killed in its onstart) must not leave a store every later job fails on ("table mcp_servers
    already exists", seen once): the store appears only whole."""
    import mlflow.store.db.utils as db_utils

    from d2it.tracking import open_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = db_utils._initialize_tables

    def killed(engine):  # some tables made, then the process dies
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE experiments (id INTEGER)")
        raise KeyboardInterrupt

    monkeypatch.setattr(db_utils, "_initialize_tables", killed)
    with pytest.raises(KeyboardInterrupt):
        open_study(uri, "t", "s")
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setattr(db_utils, "_initialize_tables", real)
    client, exp_id, parent = open_study(uri, "t", "s")
    assert client.get_run(parent).data.tags["d2it.study"] == "s"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    saw(HELD)
