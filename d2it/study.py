"""Studies as specs: a study config resolved into the plan every command and the workflow follow.

    study file ─► rows ─► specs ─► runs (identity = what changes the trained weights)
                     └──► sample sets (run + sampling) ─► metrics ─► tables, figures

Each stage has one pure identity function. A run's folder is named by the digest of its identity,
so the CLI and the Snakefile find the same folder, rows sharing a spec share its run, and settings
that cannot change the weights (sampling, evaluation, workers, logging, tracking, the per-GPU
batch) never move a run. A sample set is named by its run and its sampling settings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from d2it import config as config_mod
from d2it.errors import D2itError
from d2it.models import architecture, count_parameters, latent_geometry

DEFAULT = Path("config/cpu.yaml")
# Training settings that change the weights (checkpoint cadence, logging, the per-GPU batch do not).
TRAIN_IDENTITY = ("steps", "batch_size", "lr", "lr_warmup", "lr_decay", "betas", "weight_decay",
                  "grad_clip", "ema", "ema_std", "bf16")
# D²iT's switches that act in training only (the others are the network's, in its architecture).
LOSS_SWITCHES = ("dynamic_grain_loss", "coarse_weight", "fine_weight", "multigrain_noise")
SWITCHES = ("routing", "dynamic_grain_loss", "learnable_pos", "multigrain_noise")
ROW_KEYS = ("seeds", "sampler", "steps", "n", "cfg_scale", "grain_source")
# Sampling settings that change an image (the batch size does not: sample i depends on (seed, i)).
SAMPLE_IDENTITY = ("grain_source", "grain_calibration", "cfg_scale", "cfg_channels", "sampler",
                   "steps", "n", "seed", "bf16", "classes", "at_step")
SAMPLE_FIGURES = ("fig3", "fig4")  # grids of one sample set each
CURVE_FIGURES = ("fig5", "fig6")  # curves over many sample sets
# Metrics settings that change a number (batch size, workers and cache folders do not).
METRICS_IDENTITY = ("extractor", "n_samples", "reference", "reference_features", "bootstrap",
                    "kid_subset_size", "seed", "class_score", "classifier")


def load(path: str | Path = DEFAULT, overrides: list[str] = ()) -> dict:
    """A study config with schema defaults and `key=value` overrides, checked as a whole."""
    return _finish(config_mod.load(path, overrides), config_mod.source(path, overrides))


def resolve(study: dict, source: str) -> dict:
    """Validate a study dict (filling defaults, in place) and check it as a whole."""
    return _finish(config_mod.validate(study, source), source)


def _finish(study: dict, source: str) -> dict:
    _expand_fig5(study, source)
    check(study, source)
    tracking = study["tracking"]
    tracking["experiment"] = tracking["experiment"] or f"d2it-{study['name']}"
    return study


def fig5_spec(study: dict, spec_name: str, fine_ratio: float) -> str:
    """The name of a Fig. 5 spec: `spec_name` itself at its own fine ratio, else a copy at
    another."""
    if study["specs"][spec_name]["fine_ratio"] == fine_ratio:
        return spec_name
    return f"{spec_name}_fig5_r{fine_ratio:g}".replace(".", "p")


def _expand_fig5(study: dict, source: str) -> None:
    """Fig. 5 sweeps a D²iT spec's fine ratio: one spec per ratio, otherwise the same (the spec at
    its own ratio is the same run, as identities hold no names)."""
    fig5 = study["figures"].get("fig5")
    if fig5 is None:
        return
    spec = study["specs"].get(fig5["spec"])
    if spec is None or spec["kind"] != "d2it":
        raise D2itError(f"{source}: figures.fig5.spec: {fig5['spec']!r} is not a d2it spec")
    for ratio in fig5["fine_ratios"]:
        study["specs"].setdefault(fig5_spec(study, fig5["spec"], ratio),
                                  {**spec, "fine_ratio": ratio})


def check(study: dict, source: str) -> None:
    """What the schema cannot say: names that refer to each other, and settings rows depend on."""
    specs = study["specs"]
    for name, spec in specs.items():
        if spec["kind"] == "d2it" and spec["grain_model"] is not None:
            grain = specs.get(spec["grain_model"])
            if grain is None or grain["kind"] != "grain":
                known = sorted(n for n, s in specs.items() if s["kind"] == "grain")
                raise D2itError(f"{source}: specs.{name}.grain_model: {spec['grain_model']!r} is "
                                f"not a grain spec (grain specs: {', '.join(known) or 'none'})")
            if grain["conditional"] != spec["conditional"]:
                raise D2itError(f"{source}: specs.{name}.grain_model: {spec['grain_model']!r} has "
                                f"conditional: {grain['conditional']}, specs.{name} "
                                f"{spec['conditional']}; a grain model serves its own kind")
        if spec["kind"] != "grain":
            arch = model_architecture(study, name)
            if arch["kind"] == "d2it" and not 0 <= arch["refine_depth"] <= arch["depth"]:
                raise D2itError(f"{source}: specs.{name}: refine_depth {arch['refine_depth']} is "
                                f"outside [0, depth = {arch['depth']}]")
    for table, rows in study["tables"].items():
        for row_id in rows["rows"]:
            where = f"{source}: tables.{table}.rows.{row_id}"
            _check_row(study, where, row_settings(study, table, row_id))
    for fig in CURVE_FIGURES:
        for name, settings in curve_settings(study, fig):
            where = f"{source}: figures.{fig}"
            _check_row(study, where, settings)
            steps = train_settings(study, settings["spec"])["steps"]
            if settings["at_step"] is not None and settings["at_step"] > steps:
                raise D2itError(f"{where}.at_steps: {settings['at_step']} is past the "
                                f"{steps} training steps of specs.{settings['spec']}")
    control = study["verdict"]["positive_control"]
    if isinstance(control, dict):
        where = f"{source}: verdict.positive_control"
        rows = study["tables"].get(control["table"], {}).get("rows", {})
        if control["row"] not in rows:
            raise D2itError(f"{where}: {control['table']}/{control['row']} is not a row of the "
                            f"study (tables: {', '.join(study['tables']) or 'none'})")
        if train_settings(study, rows[control["row"]]["spec"])["steps"] < 2:
            raise D2itError(f"{where}: its spec trains fewer than 2 steps: no half-way EMA")
    for fig in (f for f in SAMPLE_FIGURES if f in study["figures"]):
        figure = study["figures"][fig]
        _check_row(study, f"{source}: figures.{fig}", figure_settings(study, fig))
        for label in figure["classes"] or []:
            if label >= study["data"]["classes"]:
                raise D2itError(f"{source}: figures.{fig}.classes: {label} is not a class of "
                                f"data.classes = {study['data']['classes']}")


def _check_row(study: dict, where: str, row: dict) -> None:
    spec = study["specs"].get(row["spec"])
    if spec is None or spec["kind"] == "grain":
        known = sorted(n for n, s in study["specs"].items() if s["kind"] != "grain")
        raise D2itError(f"{where}.spec: {row['spec']!r} is not a dit or d2it spec "
                        f"(known: {', '.join(known) or 'none'})")
    source = row["grain_source"] if spec["kind"] == "d2it" else None
    if source == "predicted" and spec["grain_model"] is None:
        raise D2itError(f"{where}: grain_source predicted needs specs.{row['spec']}.grain_model "
                        "(a grain spec)")
    unconditional = study["data"]["classes"] == 1 or not spec["conditional"]
    if row["classes"] and unconditional:
        raise D2itError(f"{where}.classes: specs.{row['spec']} is unconditional")
    if source == "gt" and row["classes"]:
        raise D2itError(f"{where}.classes: ground-truth grain maps come with their held-out "
                        "images' labels; drop classes or the gt grain source")
    if row["cfg_scale"] != 1 and (unconditional or spec["class_dropout"] == 0):
        raise D2itError(f"{where}.cfg_scale: {row['cfg_scale']} needs class-conditional data "
                        "(data.classes > 1), a conditional spec and class_dropout > 0")


# ---------------------------------------------------------------------------------------------
# Identities: one pure function per stage.


def data_identity(study: dict) -> dict:
    """What the images are (the dataset file, crop and generator) and how training sees them."""
    from d2it.data.synth import GENERATOR_VERSION

    found = {k: study["data"][k] for k in ("manifest", "resolution", "flip", "synth")}
    if found["synth"] is not None:  # a new generator makes other images from the same seed
        found["synth"] = {**found["synth"], "generator": GENERATOR_VERSION}
    return found


def threshold_identity(study: dict) -> dict:
    """What the entropy percentile table depends on."""
    rule = {k: study["grain"][k] for k in ("region", "bins", "sigma")}
    return {**data_identity(study), **rule}


def metrics_identity(study: dict) -> dict:
    return {k: study["metrics"][k] for k in METRICS_IDENTITY}


def grain_maps_identity(study: dict, fine_ratio: float) -> dict:
    """What the grain maps at a fine ratio depend on: the data and, between all-coarse (0) and
    all-fine (1), the entropy rule."""
    ratio = float(fine_ratio)
    rule = {k: study["grain"][k] for k in ("region", "bins", "sigma")} if 0 < ratio < 1 else {}
    return {"data": data_identity(study), "rule": rule, "fine_ratio": ratio}


def _train_identity(train: dict) -> dict:
    identity = {k: train[k] for k in TRAIN_IDENTITY}
    if train["ema"] is not None and train["ema_std"] is not None:
        identity["ema"] = "power"  # ema_std sets the average; the constant decay goes unused
    return identity


def train_settings(study: dict, spec_name: str) -> dict:
    """The study's stage-2 training settings with the spec's own overrides."""
    return {**study["train"], **study["specs"][spec_name].get("train", {})}


def dvae_identity(study: dict, fine_ratio: float, seed: int) -> dict:
    """What makes a DVAE's weights: its grain maps, its architecture and losses, its training
    settings and the seed."""
    dvae = {k: v for k, v in study["dvae"].items() if k not in ("train", "seed")}
    return {"stage": "dvae", "seed": seed, "grain_maps": grain_maps_identity(study, fine_ratio),
            "dvae": dvae, "train": _train_identity(study["dvae"]["train"])}


def dvae_seed(study: dict, seed: int) -> int:
    """The seed of the DVAE a stage-2 run of training seed `seed` trains on (`dvae.seed`)."""
    shared = study["dvae"]["seed"]
    return seed if shared is None else shared


def model_identity(study: dict, spec_name: str, seed: int, fine_ratio: float | None = None) -> dict:
    """What makes a stage-2 model's weights: its network and loss switches, what it trains on, the
    diffusion process, its training settings and the seed. DiT and D²iT train on the latents of
    the DVAE at their fine ratio; a grain spec trains on grain maps alone, at the fine ratio of the
    D²iT spec it serves (`fine_ratio`)."""
    spec = study["specs"][spec_name]
    kind = spec["kind"]
    if kind == "grain" and fine_ratio is None:
        raise D2itError(f"specs.{spec_name} is a grain spec: give the fine ratio of its grain maps "
                        "(--fine-ratio R)")
    if kind != "grain" and fine_ratio is not None:
        raise D2itError(f"specs.{spec_name} trains at its own fine_ratio; a fine ratio is given "
                        "for grain specs only")
    # The network as built (so a default spelled out is the same run) and the loss switches.
    model = {"size": spec.get("size"), "arch": model_architecture(study, spec_name),
             **{k: spec[k] for k in LOSS_SWITCHES if k in spec}}
    inputs = ({"grain_maps": grain_maps_identity(study, fine_ratio)} if kind == "grain"
              else {"dvae": dvae_identity(study, spec["fine_ratio"], dvae_seed(study, seed))})
    return {"stage": kind, "seed": seed, "model": model, "diffusion": dict(study["diffusion"]),
            "train": _train_identity(train_settings(study, spec_name)), **inputs}


def run_digest(identity: dict) -> str:
    """The digest of a run's identity: its folder's name, its record's `digest`, the tracker's
    tag and what a latent cache or a sample set says it was made from."""
    return config_mod.digest(identity)


def grain_maps_of(identity: dict) -> dict:
    """The grain-map identity a run's identity holds (directly, or through its DVAE's)."""
    return identity["grain_maps"] if "grain_maps" in identity else identity["dvae"]["grain_maps"]


def sample_identity(run: "Run", grain_run: "Run | None", settings: dict) -> dict:
    """What makes a sample set: the run(s) it draws from and every sampling setting that changes
    an image."""
    return {"run": run.digest, "grain_run": grain_run.digest if grain_run else None,
            **{k: settings[k] for k in SAMPLE_IDENTITY}}


def _label(identity: dict) -> str:
    """A readable folder prefix, made from the identity alone."""
    stage, seed = identity["stage"], identity["seed"]
    ratio = grain_maps_of(identity)["fine_ratio"]
    if stage in ("dvae", "grain"):
        return f"r{ratio:g}-s{seed}"
    model = identity["model"]
    size = f"{model['size']}-{model['arch']['patch_size']}" if stage == "dit" else model["size"]
    return f"{size}-r{ratio:g}-s{seed}"


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclass
class Run:
    """One training run: its stage, identity and folder."""
    stage: str  # dvae | dit | d2it | grain
    identity: dict
    folder: Path
    spec: str | None  # the spec it trains (None for a DVAE)

    @property
    def digest(self) -> str:
        return run_digest(self.identity)

    @property
    def key(self) -> str:
        """The run's folder under runs/<study>: <stage>/<label>-<digest>."""
        return f"{self.folder.parent.name}/{self.folder.name}"

    @property
    def seed(self) -> int:
        return self.identity["seed"]

    @property
    def fine_ratio(self) -> float:
        return grain_maps_of(self.identity)["fine_ratio"]


@dataclass
class SampleSet:
    """Samples of one run under one sampling setting: an .npz, its grid and its metrics."""
    name: str
    identity: dict
    run: Run
    grain_run: Run | None
    settings: dict
    npz: Path
    grid: Path
    metrics: Path

    @property
    def record(self) -> Path:
        """The sample set's record (settings, provenance), written with the .npz and the grid."""
        return self.npz.with_suffix(".json")

    @property
    def train_step(self) -> int:
        """The training step of the weights sampled: `at_step`, else the run's last."""
        return self.settings.get("at_step") or self.run.identity["train"]["steps"]


@dataclass
class Row:
    """A table row resolved: its spec and, per training seed, the run and the sample set."""
    table: str
    id: str
    spec: str
    settings: dict
    sample_sets: list[SampleSet]


@dataclass
class Plan:
    """A study resolved: its runs (each once, keyed by folder), sample sets (each once, by name),
    table rows, figures and the DVAEs of the reconstruction table, with every output's path."""
    study: dict
    runs: dict[str, Run] = field(default_factory=dict)  # key -> run
    sample_sets: dict[str, SampleSet] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, SampleSet] = field(default_factory=dict)  # fig3, fig4
    curves: dict[str, list[SampleSet]] = field(default_factory=dict)  # fig5, fig6
    curve_specs: dict[str, list[str]] = field(default_factory=dict)  # the spec of each, by name
    recon: list[Run] = field(default_factory=list)  # DVAEs of the reconstruction table
    snapshots: dict[str, set[int]] = field(default_factory=dict)  # run key -> steps kept
    # the positive control: a row and its runs' sample sets at half their training steps
    control: tuple[Row, list[SampleSet]] | None = None

    @property
    def name(self) -> str:
        return self.study["name"]

    @property
    def runs_dir(self) -> Path:
        return Path(self.study["paths"]["runs"]) / self.name

    @property
    def results_dir(self) -> Path:
        """Snakemake's outputs (not in git)."""
        return Path(self.study["paths"]["results"]) / self.name

    @property
    def published_dir(self) -> Path:
        """The results as published by `d2it report publish` (in git)."""
        return Path(self.study["paths"]["results"]) / "published" / self.name

    def _add(self, identity: dict, spec: str | None) -> Run:
        name = f"{_label(identity)}-{run_digest(identity)[:10]}"
        folder = self.runs_dir / identity["stage"] / name
        run = Run(identity["stage"], identity, folder, spec)
        return self.runs.setdefault(run.key, run)

    def dvae(self, fine_ratio: float, seed: int) -> Run:
        return self._add(dvae_identity(self.study, fine_ratio, seed), None)

    def model(self, spec_name: str, seed: int, fine_ratio: float | None = None) -> Run:
        run = self._add(model_identity(self.study, spec_name, seed, fine_ratio), spec_name)
        self.dvae(run.fine_ratio, dvae_seed(self.study, seed))
        return run

    def grain_model(self, spec_name: str, seed: int) -> Run | None:
        """The grain model run serving a D²iT spec (at its fine ratio), None for other specs."""
        spec = self.study["specs"][spec_name]
        if spec["kind"] != "d2it" or spec["grain_model"] is None:
            return None
        return self.model(spec["grain_model"], seed, spec["fine_ratio"])

    def dvae_of(self, run: Run) -> Run:
        """The DVAE run whose latent cache `run` trains on (or that is `run`)."""
        if run.stage == "dvae":
            return run
        return self.dvae(run.fine_ratio, dvae_seed(self.study, run.seed))

    def latents(self, run: Run) -> Path:
        """The latent cache `run` trains on (that of its DVAE)."""
        return self.dvae_of(run).folder / "latents"

    def sample_set(self, spec_name: str, seed: int, settings: dict) -> SampleSet:
        run = self.model(spec_name, seed)
        kind = self.study["specs"][spec_name]["kind"]
        settings = {**settings,
                    "grain_source": settings["grain_source"] if kind == "d2it" else None}
        if settings["cfg_scale"] == 1:
            settings["cfg_channels"] = None  # no guidance: which channels it would touch is moot
        predicted = settings["grain_source"] == "predicted"
        if not predicted:
            settings["grain_calibration"] = None  # only predicted maps are cut
        grain_run = self.grain_model(spec_name, seed) if predicted else None
        at_step = settings.get("at_step")
        settings["at_step"] = at_step
        identity = sample_identity(run, grain_run, settings)
        parts = [run.stage, _label(run.identity), settings["grain_source"],
                 f"cfg{settings['cfg_scale']:g}" if settings["cfg_scale"] != 1 else None,
                 f"at{at_step}" if at_step is not None else None,
                 config_mod.digest(identity)[:10]]
        name = "-".join(p for p in parts if p)
        found = SampleSet(name, identity, run, grain_run, settings,
                          npz=self.runs_dir / "samples" / f"{name}.npz",
                          grid=self.results_dir / "samples" / f"{name}.png",
                          metrics=self.results_dir / "metrics" / f"{name}.json")
        if at_step is not None:
            self.snapshots.setdefault(run.key, set()).add(at_step)
        return self.sample_sets.setdefault(name, found)

    def snapshot_steps(self, run: Run) -> list[int]:
        """The training steps at which `run` keeps its EMA weights (Fig. 6's evaluations)."""
        return sorted(self.snapshots.get(run.key, ()))

    def table_csv(self, table: str) -> Path:
        return self.results_dir / f"{table}.csv"

    def figure_png(self, fig: str) -> Path:
        return self.results_dir / f"{fig}.png"

    def fig5_dvaes(self) -> list[Run]:
        """The DVAEs whose reconstructions Fig. 5 plots, one per fine ratio and seed."""
        fig5 = self.study["figures"].get("fig5")
        if fig5 is None:
            return []
        seeds = fig5.get("seeds") or self.study["sampling"]["seeds"]
        seeds = sorted({dvae_seed(self.study, s) for s in seeds})
        return [self.dvae(r, s) for r in fig5["fine_ratios"] for s in seeds]

    def recon_json(self, run: Run) -> Path:
        return self.results_dir / "metrics" / "dvae" / f"{run.folder.name}.json"

    def recon_of(self, found: SampleSet) -> Path | None:
        """The reconstruction scores of the DVAE under a sample set's run, where the study
        evaluates that DVAE anyway (Table 1, Fig. 5); else None."""
        dvae = self.dvae_of(found.run)
        evaluated = {run.key for run in [*self.recon, *self.fig5_dvaes()]}
        return self.recon_json(dvae) if dvae.key in evaluated else None

    def uses(self, found: SampleSet) -> list[str]:
        """Where the study shows a sample set: table rows (`table2/dit_xl`), then figures."""
        rows = [f"{row.table}/{row.id}" for row in self.rows
                if found.name in {ss.name for ss in row.sample_sets}]
        curves = [fig for fig, sets in self.curves.items()
                  if found.name in {ss.name for ss in sets}]
        shown = [fig for fig, ss in self.figures.items() if ss.name == found.name]
        early = self.control[1] if self.control else []  # the positive control's early sets
        control = ["control"] if found.name in {ss.name for ss in early} else []
        return rows + curves + shown + control

    @property
    def recon_csv(self) -> Path:
        return self.results_dir / "dvae_recon.csv"

    def grain_check(self) -> tuple[SampleSet, SampleSet] | None:
        """(predicted, ground truth): sample sets of one D²iT run drawn both ways, for the figure
        of the grain model against the ground truth (None if no run is)."""
        by_run = {}
        for ss in self.sample_sets.values():
            key = (ss.run.key, ss.settings["cfg_scale"], ss.settings["at_step"])
            by_run.setdefault(key, {})[ss.settings["grain_source"]] = ss
        for sources in by_run.values():
            if "gt" in sources and "predicted" in sources:
                return sources["predicted"], sources["gt"]
        return None

    @property
    def grain_maps_png(self) -> Path:
        return self.results_dir / "grain_maps.png"

    @property
    def verdict_md(self) -> Path:
        return self.results_dir / "verdict.md"

    def targets(self) -> list[Path]:
        """What `rule all` builds: every table, figure, the reconstruction table, the grain-map
        figure and the verdicts."""
        tables = [self.table_csv(t) for t in self.study["tables"]]
        figures = [self.figure_png(f) for f in self.study["figures"]]
        recon = [self.recon_csv] if self.recon else []
        verdict = [self.verdict_md] if self.study["tables"] else []
        grain = [self.grain_maps_png] if self.grain_check() else []
        return tables + figures + recon + grain + verdict

    def find_sample_set(self, name: str) -> SampleSet:
        if name not in self.sample_sets:
            raise D2itError(f"study {self.name!r} has no sample set {name!r} "
                            "(`d2it study plan` lists them)")
        return self.sample_sets[name]

    def table_rows(self, table: str) -> list[Row]:
        if table not in self.study["tables"]:
            raise D2itError(f"study {self.name!r} has no table {table!r} "
                            f"(its tables: {', '.join(self.study['tables']) or 'none'})")
        return [row for row in self.rows if row.table == table]


def row_settings(study: dict, table: str, row_id: str) -> dict:
    """A row's spec and sampling: the study's `sampling`, then the table's keys, then the row's."""
    spec = study["tables"][table]
    row = spec["rows"][row_id]
    settings = {**study["sampling"], "classes": None}
    settings.update({k: spec[k] for k in ROW_KEYS if k in spec})
    settings.update({k: row[k] for k in ROW_KEYS if k in row})
    return {**settings, "spec": row["spec"]}


def figure_settings(study: dict, fig: str) -> dict:
    figure = study["figures"][fig]
    settings = {**study["sampling"], **{k: figure[k] for k in ROW_KEYS if k in figure}}
    return {**settings, "spec": figure["spec"], "seeds": [figure["seed"]],
            "classes": figure["classes"]}


def curve_settings(study: dict, fig: str) -> list[tuple[str, dict]]:
    """(spec, settings) of every sample set of Fig. 5 (one per fine ratio) or Fig. 6 (one per spec
    and evaluated step); seeds as the settings' `seeds`."""
    figure = study["figures"].get(fig)
    if figure is None:
        return []
    base = {**study["sampling"], "classes": None, "at_step": None,
            **{k: figure[k] for k in ROW_KEYS if k in figure}}
    if fig == "fig5":
        return [(name, {**base, "spec": name})
                for name in (fig5_spec(study, figure["spec"], r) for r in figure["fine_ratios"])]
    # The last step is the run's final weights: the same sample set as a row's
    return [(name, {**base, "spec": name,
                    "at_step": step if step != train_settings(study, name)["steps"] else None})
            for name in figure["specs"] for step in sorted(figure["at_steps"])]


def plan(study: dict) -> Plan:
    """Every row, figure and reconstruction DVAE of a study, with their runs and sample sets."""
    result = Plan(study)
    for table, spec in study["tables"].items():
        for row_id in spec["rows"]:
            settings = row_settings(study, table, row_id)
            sets = [result.sample_set(settings["spec"], seed, settings)
                    for seed in settings["seeds"]]
            result.rows.append(Row(table, row_id, settings["spec"], sets[0].settings, sets))
    for fig in (f for f in SAMPLE_FIGURES if f in study["figures"]):
        settings = figure_settings(study, fig)
        result.figures[fig] = result.sample_set(settings["spec"], settings["seeds"][0], settings)
    for fig in (f for f in CURVE_FIGURES if f in study["figures"]):
        points = [(name, seed, settings) for name, settings in curve_settings(study, fig)
                  for seed in settings["seeds"]]
        result.curves[fig] = [result.sample_set(*point) for point in points]
        result.curve_specs[fig] = [name for name, _, _ in points]
    result.fig5_dvaes()  # registers Fig. 5's DVAEs (rFD of each ratio) with the plan
    row = control_row(study, result.rows)
    if row is not None:
        half = {**row.settings, "at_step": train_settings(study, row.spec)["steps"] // 2}
        result.control = (row, [result.sample_set(row.spec, ss.run.seed, half)
                                for ss in row.sample_sets])
    recon = study["recon"]
    result.recon = [result.dvae(r, s) for r in recon["fine_ratios"] for s in recon["seeds"]]
    return result


def control_row(study: dict, rows: list[Row]) -> Row | None:
    """The row of the positive control (`verdict.positive_control`): `auto` takes the first row
    of most training seeds, whose runs train two steps or more."""
    choice = study["verdict"]["positive_control"]
    rows = [r for r in rows if train_settings(study, r.spec)["steps"] >= 2]
    if choice is None or not rows:
        return None
    if choice == "auto":
        return max(rows, key=lambda r: len(r.sample_sets))
    return next(r for r in rows if (r.table, r.id) == (choice["table"], choice["row"]))


# ---------------------------------------------------------------------------------------------
# What `d2it study plan` prints.


def model_architecture(study: dict, spec_name: str) -> dict:
    """The architecture spec (d2it.models.build) of a spec on the study's latents."""
    latent = latent_geometry(study["dvae"]["preset"], study["data"]["resolution"])
    return architecture(study["specs"][spec_name], latent, study["data"]["classes"],
                        study["diffusion"]["learn_sigma"])


@cache
def _parameters(arch_json: str) -> int:
    return count_parameters(json.loads(arch_json))


def parameters(study: dict, spec_name: str) -> int:
    return _parameters(json.dumps(model_architecture(study, spec_name), sort_keys=True))


def spec_label(study: dict, spec_name: str) -> str:
    """How tables name a spec: its `label`, else e.g. DiT-XL/2, D²iT-B (10+2), DGT-6x384."""
    spec = study["specs"][spec_name]
    if "label" in spec:
        return spec["label"]
    uncond = "" if spec["conditional"] else " (uncond)"
    if spec["kind"] == "dit":
        return f"DiT-{spec['size']}/{spec['patch']}{uncond}"
    if spec["kind"] == "grain":
        return f"DGT-{spec['depth']}x{spec['hidden']}{uncond}"
    arch = model_architecture(study, spec_name)
    changes = [f"{arch['depth'] - arch['refine_depth']}+{arch['refine_depth']}"]
    changes += [f"no {k.replace('_', ' ')}" for k in SWITCHES if not spec[k]]
    changes += ["uncond"] if uncond else []
    return f"D²iT-{spec['size']} ({', '.join(changes)}, r={spec['fine_ratio']:g})"
