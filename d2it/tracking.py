"""Run tracking: a JSON-lines file is the source of truth; MLflow mirrors it when it can.

A tracking server or database that fails never stops training: the failure is reported once and
the JSON file keeps every number.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path

from d2it.files import write_text_atomic

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
    if exp:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - another process created it first (a server's race)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock around the first use of a sqlite store: MLflow creates and migrates its
    tables when it first opens the file, and two processes doing so at once break the file for
    good ("table ... already exists"); a server serialises its own clients."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_writable(uri: str) -> None:
    """A sqlite store this process cannot write is one warning (the callers'), not MLflow's and
    SQLAlchemy's tracebacks from deep inside a write."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only")
    folder = path.parent if path.parent.exists() else Path(".")
    if not path.exists() and not os.access(folder, os.W_OK):
        raise PermissionError(f"{folder} is read-only")


def _create_store(uri: str) -> None:
    """A new sqlite store is built under a temporary name and renamed into place. MLflow makes
    its tables in many migrations, and a process killed halfway (Snakemake killed in its
    onstart) would leave a file that every later job fails on ("table ... already exists")."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for left in path.parent.glob(f".{path.name}.*.creating*"):  # a killed creator's, journal too
        left.unlink()
    # a name of its own: MLflow keeps an engine per URI for the life of the process
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.creating")
    store = SqlAlchemyStore(f"sqlite:///{tmp}", str(Path("mlruns").resolve()))
    store.engine.dispose()
    os.replace(tmp, path)


def open_study(uri: str, experiment: str, study: str | None):
    """(client, experiment id, the study's parent run id or None), the store created or migrated
    and the experiment and parent run got or made one process at a time. HTTP requests give up
    after 2 retries of 10 s at most, so an unreachable server costs seconds, not minutes."""
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                       ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    _check_writable(uri)
    with _store_lock(uri):
        _create_store(uri)
        client = MlflowClient(uri)
        exp_id = _experiment_id(client, experiment)
        parent = study_parent(client, exp_id, study) if study else None
    return client, exp_id, parent


def prepare(tracking: dict, study: str, settings: dict | None = None) -> None:
    """Create the store, the study's experiment and its parent run before any job starts (the
    workflow's onstart), the parent marked RUNNING while the workflow runs and holding the
    study's settings as params; a failure only warns, as in every job."""
    set_study_status(tracking, study, "RUNNING", settings=settings)


def finish(tracking: dict, study: str, status: str, artifacts: list[Path] = ()) -> None:
    """The study's parent run ended with the workflow (its onsuccess / onerror): FINISHED or
    FAILED, not left RUNNING, with the study's tables, figures and verdicts as artifacts."""
    set_study_status(tracking, study, status, artifacts=artifacts)


def set_study_status(tracking: dict, study: str, status: str, settings: dict | None = None,
                     artifacts: list[Path] = ()) -> None:
    if not tracking.get("uri"):
        return
    try:
        client, exp_id, parent = open_study(tracking["uri"], tracking["experiment"], study)
        if settings:
            # MLflow 3 opens an experiment of unknown kind in its GenAI view (traces): this is
            # model training, whose view is the runs table
            client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
            client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW}",
                                      json.dumps(runs_view()))
            _log_settings(client, parent, settings)
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(parent, str(path))
        if status == "RUNNING":
            client.update_run(parent, status="RUNNING")
        else:
            client.set_terminated(parent, status=status)
    except Exception as e:  # noqa: BLE001 - tracking never stops the workflow
        log.warning("MLflow store %s: study run not set %s (%s: %s)", tracking["uri"], status,
                    type(e).__name__, e)


# the runs list as docs/tracking.md shows it: .../#/experiments/<id>/runs?viewStateShareKey=d2it
VIEW = "d2it"


def runs_view() -> dict:
    """A view of the runs list that MLflow's UI opens from its URL (a shared view, kept as an
    experiment tag): the runs flat, grouped by role, and FD with its interval, the class score
    and the settings that tell rows apart as columns, with no column to add."""
    metrics = ["fd", "fd_lo", "fd_hi", "class_acc", "recon_rfd"]
    params = ["kind", "seed", "cfg_scale", "grain_source", "protocol"]
    # grouped by role, the runs are listed flat (evaluations, trainings, the study) in groups
    # that open unfolded; a shared view cannot unfold the study's nested runs (runsExpanded)
    return {"groupBy": {"aggregateFunction": "min",
                        "groupByKeys": [{"mode": "tag", "groupByData": "d2it.role"}]},
            "selectedColumns": [*(f"metrics.`{m}`" for m in metrics),
                                *(f"params.`{p}`" for p in params), "tags.`d2it.uses`"],
            "columnWidths": {"attributes.`Run Name`": 380},
            "orderByKey": "attributes.start_time", "orderByAsc": False}


def _log_settings(client, run_id: str, settings: dict) -> None:
    """The study's settings as params of its run. MLflow params cannot change: a study run again
    with other settings keeps its first values, says which changed, and tags the commit."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    params = {k: str(v)[:6000] for k, v in flatten(settings).items()}
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
    if changed:
        log.warning("MLflow: study run %s keeps its first params; changed since: %s", run_id,
                    ", ".join(changed))
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    for start in range(0, len(new), 100):  # MLflow takes 100 params per batch
        client.log_batch(run_id, params=new[start:start + 100])
    if not logged:  # the commit of the first settings, which the params keep
        client.set_tag(run_id, "d2it.commit", git_commit())


def log_evaluation(tracking: dict, study: str, run_name: str, params: dict, metrics: dict,
                   artifacts: list[Path], tags: dict | None = None) -> str | None:
    """One evaluation (a sample set's metrics) as a child run of the study: its numbers under the
    same names for every model, its settings as params, its sample grid as an artifact. Returns
    the run id, or None when tracking is off or fails (the metrics JSON has every number)."""
    if not tracking.get("uri"):
        return None
    try:
        from mlflow.entities import Metric, Param

        client, exp_id, parent = open_study(tracking["uri"], tracking["experiment"], study)
        tags = {"mlflow.parentRunId": parent, "d2it.study": study, "d2it.role": "evaluation",
                **(tags or {})}
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
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
        log.warning("MLflow: evaluation %s not logged (%s: %s)", run_name, type(e).__name__, e)
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
        """Keep the lines up to the checkpoint's step (rewritten atomically); a last line cut off
        by a kill mid-write is dropped, as its step is re-logged."""
        if not self.jsonl.exists():
            return
        kept = []
        for line in self.jsonl.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["step"] <= step:
                kept.append(line)
        write_text_atomic(self.jsonl, "".join(line + "\n" for line in kept))

    def _start_mlflow(self, id_file, uri, experiment, run_name, params, tags, study) -> None:
        try:
            from mlflow.entities import Metric, Param

            self.client, exp_id, parent = open_study(uri, experiment, study)
            self._metric = Metric
            if id_file.exists():
                self.run_id = id_file.read_text().strip()
                self.client.update_run(self.run_id, status="RUNNING")
                return
            if study:  # a child of the study's run
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

    def last(self) -> dict:
        """The last line logged to metrics.jsonl ({} if none)."""
        lines = self.jsonl.read_text().splitlines() if self.jsonl.exists() else []
        return json.loads(lines[-1]) if lines else {}

    def finish(self, status: str = "FINISHED") -> None:
        if self.client:
            try:
                self.client.set_terminated(self.run_id, status=status)
            except Exception as e:  # noqa: BLE001
                self._disable(e)
