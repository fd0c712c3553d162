"""MLflow tracking as parallel jobs meet it: a fresh store opened by several jobs at once, an
unreachable server, a metrics file cut off mid-line by a kill."""
import pytest
import json
import subprocess
import sys
import time

from d2it.tracking import Tracker

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
