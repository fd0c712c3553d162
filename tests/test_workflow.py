"""The Snakemake workflow as users run it: the README's commands dry-run through Snakemake itself
and resolve to the jobs `d2it study plan` lists; a tiny study runs for real beside another one."""
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from d2it import launch
from d2it import study as studies
from tests_support import HELD, cli_outcome, saw, tiny_study

pytestmark = pytest.mark.e2e  # Snakemake, torchrun or SLURM: subprocesses

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DVC = Path(sys.executable).parent / "dvc"
D2IT = [sys.executable, "-m", "d2it.cli"]


COMMANDS = yaml.safe_load((REPO / "docs" / "tested_commands.yaml").read_text())


def fenced_lines() -> set[str]:
    """The lines of the fenced code blocks of README.md and docs/*.md."""
    lines = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines |= {line.strip() for block in re.findall(r"^```\w*\n(.*?)^```", doc.read_text(),
                                                        re.M | re.S)
                  for line in block.splitlines() if line.strip()}
    return lines


def test_every_printed_snakemake_command_is_a_tested_one():
    """The commands the tests run are printed verbatim in README.md or docs/, and every
    `snakemake` command printed there is one the tests run."""
    printed = fenced_lines()
    assert set(COMMANDS.values()) <= printed, set(COMMANDS.values()) - printed
    snakemake = {line for line in printed if line.startswith("snakemake")}
    assert snakemake <= set(COMMANDS.values()), snakemake - set(COMMANDS.values())


@pytest.fixture
def checkout(tmp_path):
    """The workflow's files in a folder of their own, with placeholders for the prepared
    datasets."""
    for name in ("Snakefile", "workflow", "config"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    for data in ("imagenet256", "ffhq256"):
        (tmp_path / "data" / data).mkdir(parents=True)
        # read by jobs, not by a dry run
        (tmp_path / "data" / data / "manifest.json").write_text("{}")
    return tmp_path


def dry_run(args: list, cwd: Path) -> list[dict]:
    """The jobs a dry run (-n -p) prints: rule, outputs and shell command of each."""
    proc = subprocess.run([SNAKEMAKE, *args, "-n", "-p"], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append({"rule": m[1], "output": [], "shell": ""})
        elif (m := re.match(r"    output: (.*)$", line)) and jobs:
            jobs[-1]["output"] = m[1].split(", ")
        elif line.startswith("Shell command: ") and jobs:
            jobs[-1]["shell"] = line.removeprefix("Shell command: ")
    return jobs


def _leaves(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    else:
        yield obj


def plan_rows(config: str, cwd: Path) -> list[dict]:
    proc = subprocess.run([*D2IT, "study", "plan", "--config", config], capture_output=True,
                          text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()][:-1]  # less the cost line


@pytest.mark.parametrize("study", ["imagenet256", "ffhq256"])
def test_readme_cluster_command_resolves_to_the_planned_paper_jobs(study, checkout):
    command = COMMANDS[f"slurm_{study}"]
    jobs = dry_run(shlex.split(command)[1:], checkout)
    rows = plan_rows(f"config/{study}.yaml", checkout)
    # the jobs read the study as planned: the resolved config they get plans the same rows
    (job_config,) = {re.search(r"--config (\S+)", job["shell"])[1] for job in jobs
                     if "--config" in job["shell"]}
    assert plan_rows(job_config, checkout) == rows
    trains = {job["output"][0].removesuffix("/final.pt"): job["shell"] for job in jobs
              if job["rule"] == "train_model"}
    samples = {Path(job["output"][0]).stem: job["shell"] for job in jobs if job["rule"] == "sample"}
    for row in rows:
        for run in row["run_dirs"] + row["grain_run_dirs"]:
            assert f"{launch.command(8)} train model" in trains[run]
        assert f"--spec {row['spec']} --seed 0" in trains[row["run_dirs"][0]]
        for name in row["sample_sets"]:
            assert f"--sample-set {name}" in samples[name] and launch.command(8) in samples[name]
    tables = sorted({row["table"] for row in rows})
    assert sorted(job["output"][0] for job in jobs if job["rule"] == "paper_table") == \
        [f"results/{study}/{t}.csv" for t in tables]
    by_row = {(r["table"], r["row"]): r for r in rows}
    if study == "imagenet256":  # Table 2 at paper scale: DiT-XL/2, 50K samples of 250 DDPM steps
        dit = by_row["table2", "dit_xl"]
        assert dit["params"]["content"] == 675_129_632 and dit["train_steps"] == 400_000
        assert ((dit["n"], dit["sampler"], dit["sampling_steps"], dit["protocol"])
                == (50_000, "ddpm", 250, "fid50k"))
        # DiT-XL/2, D²iT-XL and its grain model over three seeds (the -G rows reuse them), and
        # Fig. 6's DiT-B/2, D²iT-B and D²iT-B's own smaller grain model (seed 0; sized to B's
        # budget)
        assert len(trains) == 3 * 3 + 3
        at = {step: [n for n in samples if f"-at{step}-" in n] for step in (100_000, 300_000)}
        assert [len(v) for v in at.values()] == [4, 4]  # B and XL, DiT and D²iT
    else:  # FFHQ: Tables 3/4 at B, Tables 1/5 at L, FID-10K
        assert {r["size"] for (t, _), r in by_row.items() if t in ("table3", "table4")} == {"B"}
        assert {r["size"] for (t, _), r in by_row.items() if t in ("table1", "table5")} == {"L"}
        assert {r["n"] for r in rows} == {10_000} and {r["protocol"] for r in rows} == {"fid10k"}


def test_readme_single_target_command_keeps_its_target(checkout):
    command = COMMANDS["slurm_target"]
    jobs = dry_run(shlex.split(command)[1:], checkout)
    assert ([job["rule"] for job in jobs].count("paper_table") == 1
            and "all" not in {j["rule"] for j in jobs})
    assert not any(j["rule"] == "samples_figure" for j in jobs)  # only what Table 2 needs


@pytest.mark.parametrize("name", ["quick", "cpu_table2", "publish"])
def test_documented_local_commands_plan_their_jobs(name, checkout):
    """The README's local commands, dry-run: the quick study's whole chain; one table of the CPU
    study and no more; publishing after every target."""
    jobs = dry_run(shlex.split(COMMANDS[name])[1:], checkout)
    rules = [job["rule"] for job in jobs]
    if name == "quick":
        plan = studies.plan(studies.load(REPO / "config" / "quick.yaml"))
        assert plan.study["mark"] == "smoke"
        assert rules.count("train_model") == len(plan.runs) - rules.count("train_dvae")
        assert {"synth_data", "sample", "sample_metrics", "paper_table", "samples_figure",
                "verdict"} <= set(rules)
    elif name == "cpu_table2":
        assert rules.count("paper_table") == 1 and "verdict" not in rules
    else:
        assert rules.count("publish") == 1
        (publish,) = [job for job in jobs if job["rule"] == "publish"]
        assert publish["output"] == ["results/cpu/published.json"]  # never a path git tracks
        assert {"paper_table", "curve_figure", "verdict"} <= set(rules)


def test_default_target_is_the_cpu_study(checkout):
    jobs = dry_run(["--cores", "2"], checkout)
    (target,) = [job for job in jobs if job["rule"] == "all"]
    plan = studies.plan(studies.load(REPO / "config" / "cpu.yaml"))
    assert {job["rule"] for job in jobs} >= {"synth_data", "train_dvae", "train_model", "sample",
                                             "paper_table"}
    tables = [job["output"][0] for job in jobs if job["rule"] == "paper_table"]
    assert sorted(tables) == sorted(str(p) for p in plan.targets()
                                    if p.suffix == ".csv" and "table" in p.name)
    other = dry_run(["--cores", "2", "--config", "name=cpu2"], checkout)  # --config applies on top
    assert {job["output"][0] for job in other if job["rule"] == "paper_table"} == \
        {t.replace("results/cpu/", "results/cpu2/") for t in tables}


def test_published_results_leave_every_job_to_do_in_a_fresh_clone(checkout):
    """A fresh clone holds the published copy (results/published/cpu/, in git) and no Snakemake
    outputs: the dry run of Table 2 lists every job it needs, runs included, and none of them
    writes into the published folder."""
    shutil.copytree(REPO / "results" / "published", checkout / "results" / "published")
    plan = studies.plan(studies.load(REPO / "config" / "cpu.yaml"))
    assert not (checkout / plan.table_csv("table2")).exists()
    jobs = dry_run(["--cores", "1", str(plan.table_csv("table2"))], checkout)
    rules = [job["rule"] for job in jobs]
    sets = [ss for row in plan.table_rows("table2") for ss in row.sample_sets]
    assert rules.count("sample") == len(sets) and rules.count("paper_table") == 1
    assert "train_model" in rules and "train_dvae" in rules and "curve_figure" not in rules
    assert not any("results/published" in out for job in jobs for out in job["output"])


@pytest.mark.bad_input
def test_nested_config_values_arrive_as_typed(checkout):
    """`--config 'train={steps: 5}'`: Snakemake reads nested values as strings; the workflow
    reads them as `d2it --set` does, merged into the study's own section."""
    jobs = dry_run(["--cores", "1", "--configfile", "config/quick.yaml", "--config",
                    "train={steps: 5, lr: 1e-3}", "sampling={n: 7}"], checkout)
    (job_config,) = {re.search(r"--config (\S+)", job["shell"])[1] for job in jobs
                     if "--config" in job["shell"]}
    resolved = yaml.safe_load((checkout / job_config).read_text())
    assert resolved["train"]["steps"] == 5 and resolved["train"]["lr"] == 0.001
    assert resolved["train"]["batch_size"] == 32 and resolved["sampling"]["n"] == 7
    saw(HELD)


def test_one_study_at_a_time(checkout):
    proc = subprocess.run([SNAKEMAKE, "-n", "--configfile", "config/cpu.yaml",
                           "config/ffhq256.yaml"],
                          capture_output=True, text=True, cwd=checkout)
    assert (proc.returncode != 0
            and "--configfile takes one study, got 2" in proc.stdout + proc.stderr)


def tree_digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_studies_run_in_one_checkout_without_touching_each_other(tmp_path):
    """A tiny study end to end through Snakemake (train, encode, sample, evaluate, tables, figures),
    then a second study in the same folder: the first one's results stay byte for byte."""
    data = {"manifest": "data/synth/manifest.json", "resolution": 32, "classes": 10,
            "synth": {"n_train": 120, "n_heldout": 30}}
    first = tiny_study(tmp_path, Path("unused"), data=data,
                       paths={"runs": "runs", "results": "results"},
                       grain={"region": 4, "thresholds": "data/synth/thresholds.json"},
                       figures={"fig3": {"spec": "d2it"}},
                       metrics={"extractor": "effnet", "bootstrap": 4, "kid_subset_size": 4,
                                "reference_features": 50, "num_workers": 0})
    second = {**first, "name": "tiny2", "recon": {"fine_ratios": [1.0]}, "tables": {},
              "figures": {}}
    for study in (first, second):
        (tmp_path / f"{study['name']}.yaml").write_text(yaml.safe_dump(study))
    args = [SNAKEMAKE, "-s", REPO / "Snakefile", "--cores", "2"]
    proc = subprocess.run([*args, "--configfile", "tiny.yaml"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = studies.plan(studies.resolve(yaml.safe_load((tmp_path / "tiny.yaml").read_text()),
                                        "tiny"))
    assert all((tmp_path / p).exists() for p in plan.targets())
    assert ((tmp_path / "results/tiny/samples").is_dir()
            and (tmp_path / "results/tiny/metrics/dvae").is_dir())
    table = (tmp_path / "results/tiny/table2.csv").read_text()
    assert "DiT-tiny/2" in table and "fd_effnet_6" in table
    # the report holds every table and figure of the study, each with its caption
    proc = subprocess.run([*args, "--configfile", "tiny.yaml", "--report", "report.html"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    for target in plan.targets():
        if Path(target).suffix in (".csv", ".png", ".md") and "/metrics/" not in str(target):
            assert Path(target).name in html, target
    for caption in ("Paper table", "Fig. 3: samples beside their grain maps",
                    "One line per claim of the paper", "held-out reconstruction of each DVAE"):
        assert caption in html, caption
    # DVC reads the rows' metrics as numbers only, in a table that fits 160 columns
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - results/tiny/rows\n")  # as published
    shown = subprocess.run([DVC, "metrics", "show", "--json"], capture_output=True, text=True,
                           cwd=tmp_path, check=True).stdout
    values = [v for file in json.loads(shown)[""]["data"].values() for v in
              _leaves(file["data"])]
    assert values and all(isinstance(v, (int, float)) for v in values)
    table = subprocess.run([DVC, "metrics", "show"], capture_output=True, text=True,
                           cwd=tmp_path, check=True).stdout
    assert "rows/table2/dit_xl.json" in table and "fd_effnet_6.mean" in table
    assert max(map(len, table.splitlines())) <= 160
    before = tree_digest(tmp_path / "results" / "tiny")
    proc = subprocess.run([*args, "--configfile", "tiny2.yaml"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results/tiny2/dvae_recon.csv").exists()
    assert tree_digest(tmp_path / "results" / "tiny") == before
    # running the first study again finds nothing to do, also after edits that change no number
    proc = subprocess.run([*args, "--configfile", "tiny.yaml", "-n"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    edited = {**first, "data": {**data, "num_workers": 1},
              "tracking": {"uri": "sqlite:///other.db"},
              "metrics": {**first["metrics"], "num_workers": 1, "batch_size": 7},
              "train": {**first["train"], "log_every": 2, "batch_gpu": 4},
              "sampling": {**first["sampling"], "batch_size": 3}}
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    proc = subprocess.run([*args, "--configfile", "edited.yaml", "-n"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    # the samples deleted to save space: what was made from them here stays
    for npz in (tmp_path / "runs" / "tiny" / "samples").glob("*.npz"):
        npz.unlink()
    proc = subprocess.run([*args, "--configfile", "tiny.yaml", "-n"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    # after an update that changes a rule's code, Snakemake reruns its jobs; the README's
    # `--rerun-triggers mtime` keeps them, and a changed setting still trains anew
    updated = tmp_path / "updated"
    updated.mkdir()
    shutil.copy(REPO / "Snakefile", updated)
    shutil.copytree(REPO / "workflow", updated / "workflow")
    rules = updated / "workflow" / "rules" / "stage2.smk"
    rules.write_text(rules.read_text().replace('"{params.args} > {log} 2>&1"',
                                               '"{params.args} >{log} 2>&1"', 1))
    plain = ["-s", updated / "Snakefile", "--cores", "all", "--configfile"]
    jobs = dry_run([*plain, "tiny.yaml"], tmp_path)
    assert "train_model" in {job["rule"] for job in jobs}
    command = COMMANDS["keep_after_pull"]
    keep = ["-s", updated / "Snakefile", *command.split()[1:], "--configfile"]
    proc = subprocess.run([SNAKEMAKE, *keep, "tiny.yaml", "-n"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    longer = {**first, "train": {**first["train"], "steps": first["train"]["steps"] + 1}}
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump(longer))
    jobs = dry_run([*keep, "longer.yaml"], tmp_path)
    assert "train_model" in {job["rule"] for job in jobs}, jobs
    # published: a copy of every target with its sha256; a clone holding only that copy (what
    # git keeps) remakes everything, runs first
    proc = subprocess.run([*args, "publish", "--configfile", "tiny.yaml"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = tmp_path / "results" / "published" / "tiny"
    manifest = json.loads((published / "PUBLISHED.json").read_text())
    assert json.loads((tmp_path / "results/tiny/published.json").read_text())["files"] == \
        len(manifest["files"])  # the rule's output: the record, outside the published copy
    assert manifest["files"]["verdict.md"] == hashlib.sha256(
        (tmp_path / "results/tiny/verdict.md").read_bytes()).hexdigest()
    targets = {target.relative_to(plan.results_dir).as_posix() for target in plan.targets()}
    assert targets <= set(manifest["files"])
    clone = tmp_path / "clone"
    shutil.copytree(published, clone / "results" / "published" / "tiny")
    shutil.copy(tmp_path / "tiny.yaml", clone)
    jobs = dry_run([*args[1:], "--configfile", "tiny.yaml"], clone)
    assert {"train_dvae", "train_model", "sample", "sample_metrics", "paper_table",
            "verdict"} <= {job["rule"] for job in jobs}


def test_lint_is_clean():
    """`snakemake --lint` exits 0 with no lint, so CI can gate on it; each rule names the one
    environment (environment.yml) that runs the `d2it` package."""
    proc = subprocess.run([SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    lints = re.findall(r"^\s+\* (.+?):$", proc.stdout + proc.stderr, re.M)
    assert proc.returncode == 0 and lints == [], proc.stdout[-2000:]
    named = []  # the two lines after each `rule NAME:`
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        lines = rules.read_text().splitlines()
        named += [[x.strip() for x in lines[i + 1:i + 3]] for i, line in enumerate(lines)
                  if re.match(r"\s*rule \w+:$", line)]
    assert len(named) > 10 and all(n == ["conda:", "CONDA_ENV,"] for n in named)


def test_multi_node_jobs_run_one_torchrun_per_node_meeting_at_the_first(checkout):
    """`nodes: 2, gpu: 16` for training: the job's command starts one torchrun per node (srun)
    with 8 processes each and a c10d rendezvous on the allocation's first node, in words
    torchrun's own parser accepts."""
    from torch.distributed.run import get_args_parser

    jobs = dry_run(["--workflow-profile", "workflow/profiles/slurm", "--configfile",
                    "config/imagenet256.yaml", "--set-resources", "train_model:nodes=2",
                    "train_model:gpu=16", "--executor", "local", "--cores", "1"], checkout)
    trains = [job["shell"] for job in jobs if job["rule"] == "train_model"]
    assert trains and all(launch.command(16, 2) in shell for shell in trains)
    # the words as the job's shell makes them, on nodes gpu-a and gpu-b of job 42
    bin_dir = checkout / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_JOB_ID": "42"}
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {launch.command(16, 2)}"], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert words[:2] == ["srun", "--overlap"] and "--ntasks-per-node" in words
    torchrun = words[words.index("torchrun") + 1:words.index("-m")]
    args = get_args_parser().parse_args([*torchrun, "-m", "d2it.cli"])
    assert (args.nproc_per_node, args.nnodes, args.rdzv_backend) == ("8", "2", "c10d")
    assert (args.rdzv_endpoint, args.rdzv_id) == ("gpu-a:29500", "42")
    assert "SIGUSR1" in args.signals_to_handle.split(",")


def test_dvc_yaml_is_one_stage_per_study_versioning_its_weights_and_results():
    """dvc.yaml is what `d2it study dvc` writes from config/*.yaml; DVC accepts it (no
    overlapping outputs between studies); each stage runs its study's Snakemake workflow up to
    `publish` and keeps every planned run's weights in the cache and the published folder in
    git, all persistent; the metrics DVC reads lie in the published folder."""
    from d2it.versioning import dvc_yaml

    configs = sorted((REPO / "config").glob("*.yaml"))
    text = dvc_yaml([c.relative_to(REPO) for c in configs])
    assert (REPO / "dvc.yaml").read_text() == text, "dvc.yaml is stale: d2it study dvc > dvc.yaml"
    listed = subprocess.run([DVC, "stage", "list"], capture_output=True, text=True, cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    stages = yaml.safe_load(text)["stages"]
    assert {line.split()[0] for line in listed.stdout.splitlines()} == set(stages)
    for config in configs:
        plan = studies.plan(studies.load(config))
        body = stages[plan.name]
        assert body["cmd"] == f"snakemake --cores all publish --configfile config/{config.name}"
        outs = {path: opts for out in body["outs"] for path, opts in out.items()}
        assert all(opts["persist"] for opts in outs.values())
        for run in plan.runs.values():
            assert outs[str(run.folder / "final.pt")]["cache"] is True
        assert outs[str(plan.published_dir)]["cache"] is False
        assert not any(str(plan.results_dir) in path for path in outs)  # remade, not versioned
        for table in plan.study["tables"]:  # read where the study is published here
            listed = str(plan.published_dir / "rows" / table) in yaml.safe_load(text)["metrics"]
            assert listed == (REPO / plan.published_dir).is_dir()
    shown = subprocess.run([DVC, "metrics", "show"], capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0 and "failed to load" not in shown.stdout + shown.stderr


def test_the_cluster_commands_preview_without_data(checkout):
    """Before the data is on disk, `-n` of each cluster command lists the study's jobs, the
    data's first; a real run stops at that job in seconds with one line naming the prepare
    command (or, for ImageNet's ADM batch, where to put it)."""
    shutil.rmtree(checkout / "data")
    for name in ("slurm_imagenet256", "slurm_ffhq256", "slurm_target"):
        rules = [job["rule"] for job in dry_run(shlex.split(COMMANDS[name])[1:], checkout)]
        assert rules.count("prepare_data") == 1 and "train_model" in rules
        assert rules.count("reference_batch") == ("imagenet256" in COMMANDS[name])
    proc = subprocess.run([SNAKEMAKE, "--cores", "1", "--configfile", "config/ffhq256.yaml",
                           "--config", "tracking={uri: null}"],
                          capture_output=True, text=True, cwd=checkout, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("d2it: error: ")]
    assert proc.returncode != 0 and lines == [
        "d2it: error: data/ffhq256/manifest.json does not exist: prepare the data first with "
        "`d2it data prepare --src /path/to/your/copy --out data/ffhq256/manifest.json` (the "
        f"header of {checkout / 'config/ffhq256.yaml'} gives the held-out fraction)"]


@pytest.mark.bad_input
def test_a_missing_configfile_is_snakemakes_own_traceback_naming_it(checkout):
    """`--configfile nope.yaml` fails in Snakemake's argument handling, before the workflow is
    read, so the workflow cannot turn it into one line: counted as the traceback it is, whose
    last line names the file (docs/studies.md says so)."""
    proc = subprocess.run([SNAKEMAKE, "-n", "--configfile", "nope.yaml"], capture_output=True,
                          text=True, cwd=checkout)
    err = proc.stdout + proc.stderr
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == "FileNotFoundError: [Errno 2] No such file or directory: 'nope.yaml'"
    assert cli_outcome(proc.returncode, err) == "traceback"  # Snakemake's: totalled as one
