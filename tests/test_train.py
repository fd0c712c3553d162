"""The shared training loop: exact resume after SIGKILL, SIGTERM checkpoints, refusals, NaN,
tracking."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import d2it
from d2it import config
from d2it.errors import D2itError
from d2it.files import sha256_file
from d2it.task import EpochBatches, RowDraws, batch_split
from d2it.study import run_digest
from d2it.train import train
from tests_support import HELD, WARNED, saw

PACKAGE = Path(d2it.__file__).parent

D2IT = [sys.executable, "-m", "d2it.cli"]


def run_cli(*args, **kw):
    return subprocess.run([*D2IT, *map(str, args)], capture_output=True, text=True, **kw)


def train_cmd(job, out):
    return [*D2IT, "train", *job, "--out", str(out)]


def start_and_stop_at_first_checkpoint(job, out, sig):
    proc = subprocess.Popen(train_cmd(job, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("ckpt-*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not (out / "final.pt").exists(), "the run ended before it could be interrupted"
    return proc


def final_weights(out):
    return torch.load(out / "final.pt", weights_only=False)["model"]


LONG = {"steps": 40, "batch_size": 8, "ckpt_every": 10, "log_every": 5, "ema": 0.9, "lr": 1.0e-3}


@pytest.fixture(scope="module", params=["dvae", "d2it"])
def job(request, study, latent_cache, tmp_path_factory):
    """Arguments of `d2it train` for a stage-1 and a stage-2 run of 40 steps with a checkpoint every
    10; the DVAE has a GAN phase from step 5, so both optimisers resume."""
    import yaml

    long = {**study, "train": {**LONG, **SCHEDULED}}
    if request.param == "dvae":
        dvae = {**study["dvae"], "gan_weight": 0.1, "gan_start": 5,
                "train": {**study["dvae"]["train"], **LONG}}
        long = {**long, "dvae": dvae}
    path = tmp_path_factory.mktemp("cfg") / "long.yaml"
    path.write_text(yaml.safe_dump(long))
    if request.param == "dvae":
        return ["dvae", "--config", str(path), "--fine-ratio", "0.5"]
    return ["model", "--config", str(path), "--spec", "d2it", "--latents", str(latent_cache)]


# The stage-2 run also warms up and decays its rate and keeps a power-function EMA, whose state
# (the count of averages) must resume too.
SCHEDULED = {"lr_warmup": 5, "lr_decay": "cosine", "ema_std": 0.1}


@pytest.fixture(scope="module")
def reference_run(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "reference"
    proc = subprocess.run(train_cmd(job, out), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.e2e
def test_sigkill_then_rerun_gives_bit_identical_weights(job, reference_run, tmp_path):
    out = tmp_path / "killed"
    start_and_stop_at_first_checkpoint(job, out, signal.SIGKILL)
    proc = subprocess.run(train_cmd(job, out), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step" in proc.stderr
    assert_same_weights(final_weights(out), final_weights(reference_run))
    ema = torch.load(out / "final.pt", weights_only=False)["ema"]
    assert_same_weights(ema, torch.load(reference_run / "final.pt", weights_only=False)["ema"])
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 41, 5))  # re-logged steps replaced, none doubled


def test_logged_rate_follows_the_schedule(job, reference_run):
    from d2it.schedules import lr_factor

    cfg = {**LONG, **SCHEDULED} if job[0] == "model" else {**LONG, "lr_warmup": 0,
                                                            "lr_decay": "constant"}
    lines = (reference_run / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    # the rate of the last step of each logged window
    expected = [cfg["lr"] * lr_factor(r["step"] - 1, cfg["steps"], cfg["lr_warmup"],
                                      cfg["lr_decay"]) for r in logged]
    assert [r["lr"] for r in logged] == pytest.approx(expected)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_checkpoint_and_exit(job, reference_run, tmp_path, sig):
    out = tmp_path / "preempted"
    proc = start_and_stop_at_first_checkpoint(job, out, sig)
    assert proc.returncode == 128 + sig
    assert "checkpoint at step" in proc.stderr.read().decode()
    proc = subprocess.run(train_cmd(job, out), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0
    assert_same_weights(final_weights(out), final_weights(reference_run))


def test_folder_of_another_config_is_refused_untouched(job, reference_run):
    before = {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()}
    key = "dvae.train.lr" if job[0] == "dvae" else "train.lr"
    proc = run_cli("train", *job, "--out", reference_run, "--set", f"{key}=0.5")
    assert proc.returncode == 2
    assert ("holds a run of a different config (" in proc.stderr
            and "train.lr: 0.001 -> 0.5)" in proc.stderr)
    assert {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()} == before


class ToyTask:
    name = "toy"

    def __init__(self, nan_at=None):
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.modules, self.phases = {"model": self.model}, {"main": self.model}
        self.dataset = torch.utils.data.TensorDataset(torch.randn(64, 3), torch.randn(64, 1))
        self.nan_at = nan_at

    def to(self, device):
        self.model.to(device)

    def distribute(self, wrap):
        pass

    def losses(self, batch, step, draws):
        x, y = batch
        loss = (self.model(x) - y).square().mean()
        if step == self.nan_at:
            loss = loss * float("nan")
        yield "main", loss, {"loss": loss.item()}


def toy_record(identity: dict) -> dict:
    """A run record as stage 1 and 2 make one: the identity and its digest."""
    return {"identity": identity, "digest": run_digest(identity)}


def toy_cfg(**kw):
    return {**config.validate({"name": "t"})["dvae"]["train"], "steps": 12, "batch_size": 8,
            "ckpt_every": 2, "log_every": 1, "ema": None, **kw}


@pytest.mark.parametrize("log_every", [1, 4])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, log_every):
    # the 6th step (0-based 5) fails; checkpoints are named by the steps done. Checked at the
    # logging and checkpoint steps only, it is still named and never saved
    with pytest.raises(D2itError, match=r"non-finite main loss \(nan\) at step 6; stopped, the "
                                        r"last good checkpoint \(step 4\) stays in"):
        train(ToyTask(nan_at=5), toy_cfg(log_every=log_every), tmp_path,
              toy_record({"toy": 1}), {"uri": None, "experiment": "t"}, seed=0)
    assert (sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
            == ["ckpt-000000002.pt", "ckpt-000000004.pt"])
    assert not (tmp_path / "final.pt").exists()


def test_nan_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(D2itError, match="at step 1; stopped, no checkpoint was written yet"):
        train(ToyTask(nan_at=0), toy_cfg(), tmp_path, toy_record({"toy": 1}),
              {"uri": None, "experiment": "t"}, seed=0)


def test_a_second_trainer_in_the_same_folder_is_refused(tmp_path):
    """While one process trains in a folder (its lock held), another is refused by name and
    writes nothing; once the first has ended, the folder trains (and resumes) again."""
    from d2it.run_folder import lock_run_dir

    record = toy_record({"toy": 1})
    train(ToyTask(), toy_cfg(steps=2), tmp_path, record, {"uri": None, "experiment": "t"},
          seed=0)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    held = lock_run_dir(tmp_path)  # as the first trainer would, from another open file
    with pytest.raises(D2itError, match=rf"{tmp_path}: pid {os.getpid()} on .* is training in "
                                        "this folder"):
        train(ToyTask(), toy_cfg(steps=4), tmp_path, record, {"uri": None, "experiment": "t"},
              seed=0)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    held.close()
    summary = train(ToyTask(), toy_cfg(steps=4), tmp_path, record,
                    {"uri": None, "experiment": "t"}, seed=0)
    assert summary["steps"] == 4


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_keep_ckpts_keeps_the_newest_and_zero_none_once_final(tmp_path, keep):
    """keep_ckpts newest checkpoints stay; 0 keeps one while training (a resume point) and none
    once final.pt is written."""
    seen = []

    class Watched(ToyTask):
        def losses(self, batch, step, draws):
            seen.append(sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.pt")))
            yield from super().losses(batch, step, draws)

    train(Watched(), toy_cfg(steps=6, keep_ckpts=keep), tmp_path, toy_record({"toy": 1}),
          {"uri": None, "experiment": "t"}, seed=0)
    assert seen[5] == [f"ckpt-{s:09d}.pt" for s in (2, 4)][-max(keep, 1):]  # before step 6
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.pt"))
    assert left == [f"ckpt-{s:09d}.pt" for s in (4, 6)][2 - keep:] if keep else left == []
    assert (tmp_path / "final.pt").is_file()


@pytest.mark.bad_input
def test_two_uninterrupted_runs_write_byte_identical_weights(tmp_path, monkeypatch):
    """final.pt and its snapshots: equal runs, here as if in two processes (temporary files are
    named by the pid), give files of equal sha256. torch names a file's records after its
    temporary name unless it is saved as a stream."""
    for name, pid in (("a", 1001), ("b", 2002)):
        monkeypatch.setattr(os, "getpid", lambda: pid)
        train(ToyTask(), toy_cfg(steps=4, keep_ckpts=1), tmp_path / name, toy_record({"toy": 1}),
              {"uri": None, "experiment": "t"}, seed=0, snapshots=(2,))
    for file in ("final.pt", "snapshots/ema-000000002.pt"):
        a, b = (sha256_file(tmp_path / name / file) for name in ("a", "b"))
        assert a == b, file
    saw(HELD)
    assert zipfile.ZipFile(tmp_path / "a" / "final.pt").namelist()[0].startswith("archive/")


def test_a_truncated_final_pt_is_one_error_naming_it(tmp_path):
    """A final.pt cut short (a kill or a full disk while it was copied) is named by the commands
    that read it, in one line, without a traceback."""
    train(ToyTask(), toy_cfg(steps=2), tmp_path, toy_record({"toy": 1}),
          {"uri": None, "experiment": "t"}, seed=0)
    final = tmp_path / "final.pt"
    final.write_bytes(final.read_bytes()[:len(final.read_bytes()) // 2])
    proc = run_cli("sample", "--run-dir", tmp_path, "--out", tmp_path / "s.npz")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"d2it: error: {final}: unreadable (")
    assert line.endswith("retrain the run or restore the file")


def test_training_step_does_not_wait_for_the_device_between_logging_steps(tmp_path,
                                                                          monkeypatch):
    """The host reads computed values (Tensor.item / tolist / __bool__ of float or bool
    tensors, from d2it's code) only at logging and checkpoint steps: counted per step on the
    CPU, where torch.cuda.set_sync_debug_mode cannot run."""
    reads = []
    for name in ("item", "tolist", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            caller = Path(sys._getframe(1).f_code.co_filename)
            # index lists (the batch sampler's) are host data; computed values are floats or
            # flags
            computed = self.is_floating_point() or self.dtype == torch.bool
            if computed and (caller.is_relative_to(PACKAGE)
                                             or caller == Path(__file__)):
                reads.append((len(steps), f"{caller.name}:{sys._getframe(1).f_lineno}"))
            return _original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, counted)

    class SilentToy(ToyTask):
        def losses(self, batch, step, draws):
            steps.append(step)
            x, y = batch
            loss = (self.model(x) - y).square().mean()
            yield "main", loss, {"loss": loss.detach()}

    steps = []
    train(SilentToy(), toy_cfg(log_every=4, ckpt_every=6, steps=12), tmp_path,
          toy_record({"toy": 1}), {"uri": None, "experiment": "t"}, seed=0)
    assert len(steps) == 12
    # reads happen right after steps 4, 6, 8 and 12 (1-based), none after the others
    assert reads and {after for after, _ in reads} <= {4, 6, 8, 12}, reads


def test_mlflow_mirrors_the_json_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train(ToyTask(), toy_cfg(), tmp_path / "run", toy_record({"toy": 1}),
          {"uri": uri, "experiment": "t"}, seed=0)
    client = MlflowClient(uri)
    run = client.get_run((tmp_path / "run" / "mlflow_run_id").read_text())
    assert run.info.status == "FINISHED" and run.data.params["toy"] == "1"
    history = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    logged = [json.loads(l)["loss"]
              for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history == pytest.approx(logged) and len(logged) == 12


@pytest.mark.bad_input
def test_a_study_groups_its_trainings_and_evaluations_under_one_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from d2it.tracking import finish, log_evaluation, prepare

    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t", "study": "s"}
    prepare(tracking, "s")  # the workflow's onstart
    for name in ("a", "b"):
        train(ToyTask(), toy_cfg(steps=2), tmp_path / name, toy_record({"toy": name}),
              tracking, seed=0)
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"png")
    evaluation = log_evaluation(tracking, "s", "dit-set", {"kind": "dit", "seed": 0},
                                {"fd_effnet_1k": 12.5, "class_acc": 0.75}, [grid])
    client = MlflowClient(tracking["uri"])
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("d2it.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["d2it.role"] for r in children) == ["evaluation", "training",
                                                                  "training"]
    found = client.get_run(evaluation)
    assert found.data.metrics == {"fd_effnet_1k": 12.5, "class_acc": 0.75}
    assert found.data.params == {"kind": "dit", "seed": "0"}
    assert [a.path for a in client.list_artifacts(evaluation)] == ["grid.png"]
    # the workflow's end ends the study's run; a rerun opens it again
    assert parent.info.status == "RUNNING"
    finish(tracking, "s", "FINISHED")
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    saw(HELD)
    prepare(tracking, "s")
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"
    finish(tracking, "s", "FAILED")
    assert client.get_run(parent.info.run_id).info.status == "FAILED"


def test_broken_tracking_warns_and_training_goes_on(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"  # a database that cannot be created
    summary = train(ToyTask(), toy_cfg(), tmp_path / "run", toy_record({"toy": 1}),
                    {"uri": uri, "experiment": "t"}, seed=0)
    assert summary["steps"] == 12
    assert "MLflow tracking off for this run" in caplog.text
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 12


@pytest.mark.bad_input
def test_a_read_only_store_is_one_warning(tmp_path, caplog, capfd, monkeypatch):
    """An existing sqlite store this user cannot write (os.access says so; root may write any
    file): one warning line, no MLflow or SQLAlchemy traceback, training goes on."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "mlflow.db").write_bytes(b"")
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if Path(path) == tmp_path / "mlflow.db" and mode == os.W_OK else real(path, mode)))
    summary = train(ToyTask(), toy_cfg(steps=2), tmp_path / "run", toy_record({"toy": 1}),
                    {"uri": uri, "experiment": "t", "study": "s"}, seed=0)
    assert summary["steps"] == 2
    err = capfd.readouterr().err
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    seen = saw(WARNED if len(warnings) == 1 and "Traceback" not in err else "traceback")
    assert seen == WARNED and "mlflow.db is read-only" in warnings[0].getMessage()


def test_epoch_batches_resume_mid_epoch():
    full = list(EpochBatches(10, 3, seed=1, start=0, total=9))
    assert list(EpochBatches(10, 3, seed=1, start=4, total=9)) == full[4:]
    epoch = [i for b in full[:3] for i in b]
    assert len(set(epoch)) == 9  # one epoch = 3 batches of distinct items
    with pytest.raises(D2itError, match="fewer than the batch size"):
        EpochBatches(2, 3, seed=0, start=0, total=1)


def test_micro_batches_of_ranks_and_rounds_cover_the_global_batch():
    """Rank r of 2 takes rows r, r + 2, ... of each global batch of 8, in 2 rounds of 2 rows."""
    full = list(EpochBatches(40, 8, seed=3, start=0, total=5))
    parts = {r: list(EpochBatches(40, 8, seed=3, start=0, total=5, rank=r, world=2, rounds=2))
             for r in (0, 1)}
    for step, batch in enumerate(full):
        rank0, rank1 = (parts[r][2 * step] + parts[r][2 * step + 1] for r in (0, 1))
        assert rank0 == batch[0::2] and rank1 == batch[1::2]
    assert batch_split(256, None, 8) == (32, 1) and batch_split(256, 16, 8) == (16, 2)
    with pytest.raises(D2itError, match="train.batch_size 30 is not a multiple of the 8 processes"):
        batch_split(30, None, 8)
    with pytest.raises(D2itError, match="not a multiple of train.batch_gpu 12 x 2 processes"):
        batch_split(32, 12, 2)


def test_row_draws_do_not_depend_on_the_split():
    """A row's random numbers depend on (seed, step, draw) and its global row, not on which
    process or accumulation round holds it."""
    whole = RowDraws(7, 8)
    whole.begin(3, torch.arange(8))
    expected = [whole.randn(8, 2), whole.randint(1000, 8)]
    part = RowDraws(7, 8)
    part.begin(3, torch.tensor([1, 3, 5, 7]))
    assert torch.equal(part.randn(4, 2), expected[0][1::2])
    assert torch.equal(part.randint(1000, 4), expected[1][1::2])
    with pytest.raises(ValueError, match="drawing for 8 rows, the micro-batch has 4"):
        part.rand(8)


@pytest.mark.e2e
def test_compiled_and_eager_runs_log_the_same_losses(study, latent_cache, tmp_path):
    """torch.compile changes how the step runs, not what it computes: 20 steps of D²iT-tiny on
    the CPU, compiled and eager, log the same loss curve within float noise; the compiled run
    says so in its summary and Dynamo compiled graphs without falling back."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from d2it.stage2 import train_model

    curves, summaries = {}, {}
    for setting in (False, True):
        train = {**study["train"], "steps": 20, "log_every": 1, "ckpt_every": 20, "lr": 1.0e-3,
                 "compile": setting}
        torch._dynamo.reset()
        counters.clear()
        out = tmp_path / f"compile-{setting}"
        summaries[setting] = train_model({**study, "train": train}, "d2it", 0, latent_cache, out)
        lines = (out / "metrics.jsonl").read_text().splitlines()
        curves[setting] = [json.loads(line)["loss"] for line in lines]
    assert summaries[False]["network"] == "eager (compile: false)"
    assert summaries[True]["network"] == "compiled"
    assert counters["stats"]["unique_graphs"] > 0 and not counters["unimplemented"]
    assert len(curves[True]) == 20 and curves[True][0] != curves[True][-1]
    assert curves[True] == pytest.approx(curves[False], rel=1e-3)


def test_auto_per_gpu_batch_accumulates_to_the_same_step(tmp_path, monkeypatch):
    """`train.batch_gpu: auto` trains with what the memory probe fits (here a GPU said to hold
    2 of the 8 rows): 4 micro-batches accumulated, the weights of the whole batch at once."""
    import d2it.train as train_mod

    summaries, weights = {}, {}
    for setting in (None, "auto"):
        monkeypatch.setattr(train_mod, "fit_batch_gpu", lambda task, opts, cfg, world, device: 2)
        out = tmp_path / str(setting)
        summaries[setting] = train(ToyTask(), toy_cfg(batch_gpu=setting), out,
                                   toy_record({"toy": 1}), {"uri": None, "experiment": "t"},
                                   seed=0)
        weights[setting] = torch.load(out / "final.pt", weights_only=False)["model"]
    assert (summaries[None]["batch_gpu"], summaries[None]["accumulation_rounds"]) == (8, 1)
    assert (summaries["auto"]["batch_gpu"], summaries["auto"]["accumulation_rounds"]) == (2, 4)
    for name, value in weights[None].items():
        torch.testing.assert_close(weights["auto"][name], value, rtol=1e-6, atol=1e-7)
