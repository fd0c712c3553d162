"""Run tracking: a JSON-lines file is the source of truth; MLflow mirrors it when it can.

A tracking server or database that fails never stops training: the failure is reported once and
the JSON file keeps every number.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).parent).stdout.strip()
        return f"{sha}{'-dirty' if dirty else ''}" if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"

def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

def study_parent(client, experiment_id: str, study: str) -> str:
    """The MLflow run that groups a study's runs (trainings, sample sets, evaluations) as its
    children; the first job that needs it creates it."""
    query = f"tags.`d2it.role` = 'study' and tags.`d2it.study` = '{study}'"
    found = client.search_runs([experiment_id], filter_string=query,
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"d2it.role": "study", "d2it.study": study}
    return client.create_run(experiment_id, run_name=f"study:{study}", tags=tags).info.run_id


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def log_evaluation(tracking: dict, study: str, name: str, params: dict, metrics: dict,
                   artifacts: list[Path]) -> str | None:
    """One evaluation (a sample set's metrics) as a child run of the study: its numbers under the
    same names for every model, its settings as params, its sample grid as an artifact. Returns
    the run id, or None when tracking is off or fails (the metrics JSON has every number)."""
    if not tracking.get("uri"):
        return None
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking["uri"])
        exp_id = _experiment_id(client, tracking["experiment"])
        tags = {"mlflow.parentRunId": study_parent(client, exp_id, study), "d2it.study": study,
                "d2it.role": "evaluation"}
        run_id = client.create_run(exp_id, run_name=f"metrics:{name}", tags=tags).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id,
                         metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param(k, str(v)[:6000]) for k, v in flatten(params).items()])
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
        return run_id
    except Exception as e:  # noqa: BLE001 - tracking never fails an evaluation
        log.warning("MLflow: evaluation %s not logged (%s: %s)", name, type(e).__name__, e)
        return None


class Tracker:
    def __init__(self, out: Path, uri: str | None, experiment: str, run_name: str, params: dict,
                 tags: dict, resume_step: int, write: bool = True, study: str | None = None):
        self.jsonl = Path(out) / "metrics.jsonl"
        self.write = write  # write=False: a non-main DDP process
        if write:
            # a resumed run re-logs the steps after its checkpoint
            self._truncate_after(resume_step)
        self.client = self.run_id = None
        if uri:
            self._start_mlflow(Path(out) / "mlflow_run_id", uri, experiment, run_name, params, tags,
                               study)

    def _truncate_after(self, step: int) -> None:
        if self.jsonl.exists():
            lines = [l for l in self.jsonl.read_text().splitlines()
                     if l and json.loads(l)["step"] <= step]
            self.jsonl.write_text("".join(l + "\n" for l in lines))

    def _start_mlflow(self, id_file, uri, experiment, run_name, params, tags, study) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient

            self.client, self._metric = MlflowClient(uri), Metric
            if id_file.exists():
                self.run_id = id_file.read_text().strip()
                self.client.update_run(self.run_id, status="RUNNING")
                return
            exp_id = _experiment_id(self.client, experiment)
            if study:  # a child of the study's run
                parent = study_parent(self.client, exp_id, study)
                tags = {**tags, "mlflow.parentRunId": parent, "d2it.study": study,
                        "d2it.role": "training"}
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            id_file.write_text(self.run_id)
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000])
                                                       for k, v in flatten(params).items()])
        except Exception as e:  # noqa: BLE001 - any tracking failure must leave training running
            self._disable(e)

    def _disable(self, error: Exception) -> None:
        log.warning("MLflow tracking off for this run (%s: %s); metrics go to %s only",
                    type(error).__name__, error, self.jsonl)
        self.client = None

    def log(self, metrics: dict, step: int) -> None:
        if not self.write:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.client:
            try:

                now = int(time.time() * 1000)
                self.client.log_batch(self.run_id, metrics=[self._metric(k, float(v), now, step)
                                                            for k, v in metrics.items()])
            except Exception as e:  # noqa: BLE001
                self._disable(e)

    def finish(self, status: str = "FINISHED") -> None:
        if self.client:
            try:
                self.client.set_terminated(self.run_id, status=status)
            except Exception as e:  # noqa: BLE001
                self._disable(e)
