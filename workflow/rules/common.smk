import hashlib
import json
import os
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

from d2it import launch
from d2it import study as studies
from d2it import config as config_mod
from d2it.config import digest
from d2it.errors import D2itError
from d2it.files import write_text_atomic


def study_file() -> str:
    """The study named by --configfile (one file, used alone, with the schema's defaults), else
    config/cpu.yaml; --config key=value overrides apply on top of either."""
    files = list(workflow.overwrite_configfiles)
    if len(files) > 1:
        raise WorkflowError(f"--configfile takes one study, got {len(files)}: "
                            f"{', '.join(map(str, files))} (put targets before --configfile)")
    if files:
        return str(files[0])
    default = Path(workflow.basedir) / "config" / "cpu.yaml"
    study = yaml.safe_load(default.read_text())
    update_config(study, config)
    config.clear()
    config.update(study)
    return str(default)


def typed_overrides() -> None:
    """--config values as a person types them. Snakemake reads a nested one (`train={steps: 5}`)
    with YAML's BaseLoader, all strings, which the schema would refuse ('5' is not of type
    'integer'); each string of --config is read again as `d2it --set` reads values."""

    def retype(node: dict, given: dict) -> None:
        for key, value in given.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                retype(node[key], value)
            elif isinstance(value, str):
                node[key] = config_mod.override_value(f"{key}={value}", value)

    retype(config, workflow.config_settings.config or {})


# Every job watches the Snakemake process that runs it (this one: the Snakefile is read again in
# each process that runs jobs, a cluster job's included) and stops itself when it is gone.
shell.prefix(f"export D2IT_PARENT_PID={os.getpid()}; ")


STUDY_FILE = study_file()
typed_overrides()
try:
    STUDY = studies.resolve(config, STUDY_FILE)
except D2itError as e:
    raise WorkflowError(str(e)) from None
PLAN = studies.plan(STUDY)
RUNS = str(PLAN.runs_dir)
RESULTS = str(PLAN.results_dir)
LOGS = f"logs/{PLAN.name}"
# Every rule runs the one `d2it` package of the one environment, installed once per machine;
# each names environment.yml (the same pins), which `snakemake --lint` asks of every rule.
CONDA_ENV = "../../environment.yml"


# Every job reads the resolved study from one content-addressed file (params.config, made by
# study_config so that a change that moves no run, sample set or metric re-runs nothing).
_resolved = yaml.safe_dump(STUDY, sort_keys=False)  # rows keep their order
CFG = f".snakemake/d2it-config/{hashlib.sha256(_resolved.encode()).hexdigest()[:16]}.yaml"
if not Path(CFG).exists():
    write_text_atomic(CFG, _resolved)


def identity(of) -> str:
    """A rule param naming what its output depends on (studies.*_identity), so an edit to that,
    and nothing else, re-runs the rule."""
    return digest(of(STUDY))[:16]


def one_of(names) -> str:
    """A wildcard constraint that matches exactly these names."""
    return "|".join(re.escape(str(n)) for n in sorted(names)) or "(?!)"


def runs_of(stage: str) -> dict:
    return {key: run for key, run in PLAN.runs.items() if run.stage in stage.split("|")}


def d2it_cmd(wildcards, resources):
    """The CLI of a training or sampling job: torchrun over its GPUs when the profile gives it
    several (resources.gpu, SLURM's --gpus, in all over resources.nodes), else the plain `d2it`
    (d2it/launch.py)."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    return launch.command(gpus, int(getattr(resources, "nodes", 1) or 1))


def study_config(wildcards, output) -> str:
    """The resolved study file a job reads (`--config {params.config}`). Its name changes with any
    edit of the study, so it must not re-run jobs by itself: a param computed from `output` is one
    Snakemake counts as derived and leaves out of its params trigger. What an output depends on
    is in its identity params."""
    return CFG


def weights(path: str):
    """A model's final.pt: in a rehearsal a temp() file, deleted once every sample set that
    reads it is drawn (a D²iT-XL run's is 5.5 GB: the rehearsal's disk holds few at a time)."""
    return temp(path) if STUDY["mark"] == "rehearsal" else path


DVAES = runs_of("dvae")
MODELS = runs_of("dit|d2it|grain")


def model_args(wildcards) -> str:
    run = MODELS[wildcards.run]
    ratio = f" --fine-ratio {run.fine_ratio}" if run.stage == "grain" else ""
    return f"--spec {run.spec} --seed {run.seed}{ratio}"


def recorded(name: str, inputs: list) -> list:
    """`inputs` and a record of them, {RESULTS}/.inputs/<name>.json, rewritten only when they
    change. A table or figure made from other sample sets than the plan now names is then older
    than its record, so `--rerun-triggers mtime` (which ignores a changed list of inputs, and
    counts a missing one as deleted to save space) still remakes it, and the runs it needs."""
    record = Path(RESULTS) / ".inputs" / f"{name}.json"
    text = json.dumps(sorted(map(str, inputs)), indent=0) + "\n"
    if not record.is_file() or record.read_text() != text:
        write_text_atomic(record, text)
    return [*inputs, str(record)]


def sample_inputs(wildcards) -> dict:
    """The runs a sample set reads: its model, its grain model, the DVAE that decodes, the cache
    (held-out grain maps)."""
    found = PLAN.sample_sets[wildcards.name]
    inputs = {"run": found.run.folder / "final.pt",
              "dvae": PLAN.dvae_of(found.run).folder / "final.pt",
              "latents": PLAN.latents(found.run) / "meta.json"}
    if found.grain_run:
        inputs["grain"] = found.grain_run.folder / "final.pt"
    return inputs


def table_inputs(wildcards) -> list:
    sets = [ss for row in PLAN.table_rows(wildcards.table) for ss in row.sample_sets]
    inputs = [ss.metrics for ss in sets]
    if STUDY["metrics"]["class_score"]:  # each row's decode ceiling
        inputs += sorted({PLAN.recon_json(PLAN.dvae_of(ss.run)) for ss in sets})
    return recorded(wildcards.table, inputs)


def metrics_inputs(wildcards) -> dict:
    """The samples, their record and what they are scored against. (The DVAE's reconstruction
    scores, which MLflow shows beside them when made, are no input: an `eval_recon` rerun must
    not redo every FD job.)"""
    found = PLAN.sample_sets[wildcards.name]
    reference = STUDY["metrics"]["reference"]  # an ADM batch (a file), or a split of the data
    return {"samples": found.npz, "record": found.record, "manifest": STUDY["data"]["manifest"],
            **({"reference": reference} if reference.endswith(".npz") else {})}


def recon_inputs(wildcards) -> Path:
    run = DVAES[f"dvae/{wildcards.name}"]
    return run.folder / "final.pt"


def curve_inputs(wildcards) -> list:
    sets = PLAN.curves[wildcards.fig]
    recon = [PLAN.recon_json(run) for run in PLAN.fig5_dvaes()] if wildcards.fig == "fig5" else []
    return recorded(wildcards.fig, [ss.metrics for ss in sets] + recon)


def samples_of(name: str, sets: list) -> dict:
    """The .npz files a figure of samples shows (Figs. 3 and 4, the grain maps), and their
    record."""
    *samples, record = recorded(name, [ss.npz for ss in sets])
    return {"samples": samples, "record": record}


def verdict_inputs(wildcards) -> list:
    sets = [ss for row in PLAN.rows for ss in row.sample_sets]
    sets += [ss for curve in PLAN.curves.values() for ss in curve]
    sets += PLAN.control[1] if PLAN.control else []  # the positive control's half-way sets
    inputs = [ss.metrics for ss in sets] + [PLAN.recon_json(run) for run in PLAN.fig5_dvaes()]
    return recorded("verdict", inputs)


def recon_table_inputs(wildcards) -> list:
    return recorded("dvae_recon", [PLAN.recon_json(run) for run in PLAN.recon])
