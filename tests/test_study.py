"""Studies as specs: the plan of each study config, run identities from what changes the weights,
and `d2it study plan` as a user reads it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from d2it import study as studies
from d2it.report.plan_rows import describe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "config"


def dit_parameters(hidden: int, depth: int, tokens: int, patch: int, channels: int, labels: int,
                   learn_sigma: bool = True) -> int:
    """DiT's parameter count from its layer shapes (facebookresearch/DiT models.py): patch
    embedding, timestep MLP, label table, fixed position table, 18 D² + 15 D per adaLN-Zero block,
    final layer."""
    out = patch * patch * channels * (2 if learn_sigma else 1)
    embed = patch * patch * channels * hidden + hidden
    timestep = 256 * hidden + hidden + hidden * hidden + hidden
    blocks = depth * (18 * hidden**2 + 15 * hidden)
    final = hidden * 2 * hidden + 2 * hidden + hidden * out + out
    return embed + timestep + labels * hidden + tokens * hidden + blocks + final


def plan_rows(config: Path, *sets: str, cli: bool = False) -> list[dict]:
    """The rows `d2it study plan` prints (through the CLI when `cli`, else in this process)."""
    if not cli:
        plan = studies.plan(studies.load(config, list(sets)))
        return json.loads(json.dumps([describe(plan, row) for row in plan.rows]))
    args = [sys.executable, "-m", "d2it.cli", "study", "plan", "--config", str(config)]
    proc = subprocess.run(args + [a for s in sets for a in ("--set", s)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *rows, cost = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "gpu_hours" in cost and "table" not in cost  # the last line: the study's cost
    return rows


def plan_cost(config: Path, *sets: str) -> dict:
    """The last line of `d2it study plan`: what the whole study costs."""
    args = [sys.executable, "-m", "d2it.cli", "study", "plan", "--config", str(config)]
    proc = subprocess.run(args + [a for s in sets for a in ("--set", s)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def by_row(rows):
    return {(r["table"], r["row"]): r for r in rows}


def test_formula_gives_the_published_dit_counts():
    assert dit_parameters(1152, 28, 256, 2, 4, 1001) == 675_129_632
    assert dit_parameters(768, 12, 256, 2, 4, 1001) == 130_512_416


def test_imagenet_plan_lists_table2_at_paper_scale():
    rows = by_row(plan_rows(CONFIGS / "imagenet256.yaml", cli=True))
    assert sorted(rows) == [("table2", r) for r in ("d2it_xl", "d2it_xl_g", "dit_xl", "dit_xl_g")]
    dit, d2it = rows["table2", "dit_xl"], rows["table2", "d2it_xl"]
    assert dit["label"] == "DiT-XL/2" and dit["params"] == {"content": 675_129_632, "grain": 0,
                                                            "total": 675_129_632}
    grain = dit_parameters(384, 3, 256, 1, 1, 1001)  # the Dynamic Grain Transformer on 16 x 16 maps
    assert d2it["params"] == {"content": 677_803_432, "grain": grain, "total": 677_803_432 + grain}
    # the paper's D²iT-XL: 687M in all
    assert d2it["params"]["total"] == pytest.approx(687e6, rel=0.01)
    for row in rows.values():
        assert (row["n"], row["sampler"], row["sampling_steps"]) == (50_000, "ddpm", 250)
        assert ((row["train_steps"], row["global_batch"], row["protocol"])
                == (400_000, 256, "fid50k"))
        assert all(d.startswith("runs/imagenet256/")
                   for d in row["run_dirs"] + row["dvae_run_dirs"])
    assert rows["table2", "dit_xl_g"]["cfg_scale"] == 1.5 and d2it["grain_source"] == "predicted"
    # the primary claims' rows: three training seeds, each on its own DVAE
    assert all(row["seeds"] == [0, 1, 2] for row in rows.values())
    assert len(set(dit["dvae_run_dirs"])) == 3
    # FLOPs per forward: DiT's paper gives 118.6 GFLOPs for XL/2, counting a multiply-add as one
    assert dit["gflops_per_forward"]["content"] == pytest.approx(2 * 118.6, rel=1e-3)
    assert rows["table2", "dit_xl_g"]["run_dirs"] == dit["run_dirs"]  # one spec, one run
    assert rows["table2", "dit_xl_g"]["sample_sets"] != dit["sample_sets"]
    assert d2it["grain_run_dirs"] and d2it["dvae_run_dirs"] != dit["dvae_run_dirs"]  # r = 0.5 vs 1


def test_ffhq_plan_has_the_paper_sizes_per_table():
    rows = by_row(plan_rows(CONFIGS / "ffhq256.yaml", cli=True))
    unconditional = {"labels": 1}  # one class, no null class to drop labels to
    for (table, row_id), row in rows.items():
        assert (row["n"], row["protocol"], row["cfg_scale"]) == (10_000, "fid10k", 1.0)
        assert row["size"] == ("B" if table in ("table3", "table4") else "L"), (table, row_id)
    assert rows["table3", "dit_b"]["params"]["content"] == dit_parameters(768, 12, 256, 2, 4,
                                                                          **unconditional)
    assert rows["table3", "dit_b"]["params"]["content"] == 130_512_416 - 1000 * 768
    assert rows["table1", "dit_l"]["params"]["content"] == dit_parameters(1024, 24, 256, 2, 4,
                                                                          **unconditional)
    table4 = {r: (rows["table4", r]["depth"] - rows["table4", r]["refine_depth"],
                  rows["table4", r]["refine_depth"])
              for r in ("r12_0", "r10_2", "r8_4", "r12_2", "r12_4")}
    assert table4 == {"r12_0": (12, 0), "r10_2": (10, 2), "r8_4": (8, 4), "r12_2": (12, 2),
                      "r12_4": (12, 4)}
    # shared: Table 4's one seed is Table 3's first
    assert rows["table3", "d2it_b"]["sample_sets"][:1] == rows["table4", "r10_2"]["sample_sets"]
    assert all(rows[key]["seeds"] == [0, 1, 2] for key in rows if key[0] != "table4")
    sources = {r: rows["table5", r]["grain_source"] for r in ("random", "gt", "predicted")}
    assert sources == {"random": "random", "gt": "gt", "predicted": "predicted"}


def test_d2it_totals_match_the_papers_budgets():
    """D²iT-L 467M and D²iT-XL 687M (content + grain model) within 1 %; D²iT-B, which the paper
    does not size, keeps XL's overhead over DiT (687 / 675) within 1 %; the CPU study's D²iT-tiny
    totals DiT-tiny within 2 %."""
    ffhq = by_row(plan_rows(CONFIGS / "ffhq256.yaml"))
    imagenet = by_row(plan_rows(CONFIGS / "imagenet256.yaml"))
    cpu = by_row(plan_rows(CONFIGS / "cpu.yaml"))
    total = {key: row["params"]["total"] for key, row in ffhq.items()}
    assert total["table1", "d2it_l"] == pytest.approx(467e6, rel=0.01)
    assert total["table3", "d2it_b"] / total["table3", "dit_b"] == pytest.approx(687 / 675,
                                                                                 rel=0.01)
    study = studies.load(CONFIGS / "imagenet256.yaml")
    b = {spec: studies.parameters(study, spec) for spec in ("dit_b", "d2it_b", "dgt_b")}
    assert (b["d2it_b"] + b["dgt_b"]) / b["dit_b"] == pytest.approx(687 / 675, rel=0.01)
    assert imagenet["table2", "d2it_xl"]["params"]["total"] == pytest.approx(687e6, rel=0.01)
    for table, dit, d2it in (("table1", "dit_l", "d2it_l"), ("table2", "dit_xl", "d2it_xl")):
        assert (cpu[table, d2it]["params"]["total"]
                == pytest.approx(cpu[table, dit]["params"]["total"], rel=0.02))


@pytest.mark.e2e
def test_the_plan_prints_what_the_extra_seeds_cost_and_one_key_removes_them():
    three = plan_cost(CONFIGS / "imagenet256.yaml")
    one = plan_cost(CONFIGS / "imagenet256.yaml", "tables.table2.seeds=[0]")
    assert three["gpu_hours"]["beyond_first_seed"] > 0
    assert one["gpu_hours"]["beyond_first_seed"] == 0
    # two more seeds of every run (DVAEs included) and sample set, minus the figures' seed-0 sets
    assert three["gpu_hours"]["train"] == pytest.approx(3 * one["gpu_hours"]["train"], rel=0.3)
    assert three["gpu_hours"]["total"] - one["gpu_hours"]["total"] == pytest.approx(
        three["gpu_hours"]["beyond_first_seed"], abs=1.5)  # each rounded to 3 digits
    rows = by_row(plan_rows(CONFIGS / "imagenet256.yaml", "tables.table2.seeds=[0]"))
    assert all(row["seeds"] == [0] for row in rows.values())


def test_flops_per_forward_match_dits_published_counts():
    """DiT's paper (Table 4) counts 118.6 and 23.01 GFLOPs for XL/2 and B/2 at 256 px, a
    multiply-add as one; torch's counter counts it as two."""
    from d2it.cost import forward_flops

    study = studies.load(CONFIGS / "imagenet256.yaml")
    assert forward_flops(studies.model_architecture(study, "dit_xl")) / 1e9 == pytest.approx(
        2 * 118.6, rel=1e-3)
    assert forward_flops(studies.model_architecture(study, "dit_b")) / 1e9 == pytest.approx(
        2 * 23.01, rel=1e-3)


def run_dirs(rows) -> dict:
    return {key: tuple(r["run_dirs"] + r["grain_run_dirs"] + r["dvae_run_dirs"])
            for key, r in by_row(rows).items()}


def sample_sets(rows) -> dict:
    return {key: tuple(r["sample_sets"]) for key, r in by_row(rows).items()}


def test_sampling_settings_name_sample_sets_never_runs():
    base = plan_rows(CONFIGS / "imagenet256.yaml")
    fewer = plan_rows(CONFIGS / "imagenet256.yaml", "sampling.steps=100")
    assert run_dirs(fewer) == run_dirs(base)
    assert all(a != b for a, b in zip(sample_sets(fewer).values(), sample_sets(base).values()))


def test_a_d2it_key_leaves_the_dit_run_alone():
    base = run_dirs(plan_rows(CONFIGS / "imagenet256.yaml"))
    changed = run_dirs(plan_rows(CONFIGS / "imagenet256.yaml", "specs.d2it_xl.refine_depth=3"))
    assert changed["table2", "dit_xl"] == base["table2", "dit_xl"]
    # the content model moves, for every seed
    seeds = 3
    moved = zip(changed["table2", "d2it_xl"][:seeds], base["table2", "d2it_xl"][:seeds])
    assert all(a != b for a, b in moved)
    # its grain model and DVAE stay
    assert changed["table2", "d2it_xl"][seeds:] == base["table2", "d2it_xl"][seeds:]


def test_settings_that_cannot_change_weights_or_samples_name_nothing():
    base = plan_rows(CONFIGS / "cpu.yaml")
    same = plan_rows(CONFIGS / "cpu.yaml", "data.num_workers=4", "tracking.uri=null",
                     "train.log_every=7", "train.ckpt_every=9", "train.batch_gpu=8",
                     "dvae.train.log_every=3",
                     "sampling.batch_size=10", "metrics.bootstrap=3", "metrics.num_workers=0")
    assert run_dirs(same) == run_dirs(base) and sample_sets(same) == sample_sets(base)


def test_training_settings_move_the_runs_they_reach():
    study = studies.load(CONFIGS / "cpu.yaml")
    plan = studies.plan(study)
    dit, dvae = plan.model("dit", 0), plan.dvae(1.0, 0)
    lr = studies.plan(studies.load(CONFIGS / "cpu.yaml", ["train.lr=0.001"]))
    assert lr.model("dit", 0).folder != dit.folder and lr.dvae(1.0, 0).folder == dvae.folder
    steps = studies.plan(studies.load(CONFIGS / "cpu.yaml", ["dvae.train.steps=10"]))
    assert steps.dvae(1.0, 0).folder != dvae.folder and steps.model("dit", 0).folder != dit.folder
    assert plan.model("dit", 1).folder != dit.folder and plan.model("dit", 1).seed == 1
    spelled = studies.plan(studies.load(CONFIGS / "cpu.yaml", ["specs.d2it.refine_depth=1",
                                                               "specs.d2it.depth=4"]))
    # tiny's defaults, spelled out
    assert spelled.model("d2it", 0).folder == plan.model("d2it", 0).folder


def test_the_constant_decay_names_a_run_only_without_a_power_ema():
    """With ema_std set the constant `ema` decay goes unused (train.make_ema): changing it leaves
    the run's name; without ema_std it moves the run, and so does ema_std itself."""
    def dit_folder(*sets):
        return studies.plan(studies.load(CONFIGS / "cpu.yaml", list(sets))).model("dit", 0).folder

    power = dit_folder("train.ema_std=0.1")
    assert dit_folder("train.ema_std=0.1", "train.ema=0.99") == power
    assert dit_folder("train.ema_std=0.05") != power
    assert dit_folder("train.ema_std=0.1", "train.ema=null") != power  # no EMA at all
    constant = dit_folder("train.ema_std=null", "train.ema=0.999")
    assert dit_folder("train.ema_std=null", "train.ema=0.99") != constant != power


def test_seeds_are_a_dimension_of_a_row():
    rows = by_row(plan_rows(CONFIGS / "cpu.yaml", "tables.table2.rows.dit_xl.seeds=[0, 1, 2]",
                            "dvae.seed=0"))
    row = rows["table2", "dit_xl"]
    assert (row["seeds"] == [0, 1, 2] and len(set(row["run_dirs"])) == 3
            and len(set(row["sample_sets"])) == 3)
    # every seed's generator trains on the one DVAE of `dvae.seed` ...
    assert set(row["dvae_run_dirs"]) == {str(studies.plan(studies.load(CONFIGS / "cpu.yaml"))
                                             .dvae(1.0, 0).folder)}
    # ... or, with dvae.seed null (the CPU study's), each seed retrains the whole pipeline
    rows = by_row(plan_rows(CONFIGS / "cpu.yaml", "tables.table2.rows.dit_xl.seeds=[0, 1, 2]"))
    assert len(set(rows["table2", "dit_xl"]["dvae_run_dirs"])) == 3


@pytest.mark.e2e
def test_plan_of_one_table_and_cpu_labels():
    rows = plan_rows(CONFIGS / "cpu.yaml")
    table4 = [r for r in rows if r["table"] == "table4"]
    assert [r["paper_method"] for r in table4] == ["12 + 0", "10 + 2", "8 + 4", "12 + 2", "12 + 4"]
    assert ([r["label"].split(" (")[1].split(",")[0] for r in table4]
            == ["4+0", "3+1", "2+2", "4+1", "4+2"])
    args = [sys.executable, "-m", "d2it.cli", "study", "plan", "--table", "table5"]
    # default: config/cpu.yaml
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert ([json.loads(line)["row"] for line in proc.stdout.splitlines()[:-1]]
            == ["random", "gt", "predicted"])  # and the study's cost line
    proc = subprocess.run(args[:-1] + ["table9"], capture_output=True, text=True, cwd=REPO)
    assert (proc.returncode == 2
            and "has no table 'table9' (its tables: table1, table2, table3" in proc.stderr)


def test_plan_targets_and_paths_are_per_study(tmp_path):
    cpu = studies.plan(studies.load(CONFIGS / "cpu.yaml"))
    other = studies.plan(studies.load(CONFIGS / "cpu.yaml", ["name=cpu2"]))
    assert [str(p) for p in cpu.targets()] == [f"results/cpu/{t}" for t in (
        "table1.csv", "table2.csv", "table3.csv", "table4.csv", "table5.csv", "fig3.png",
        "fig4.png", "fig5.png", "fig6.png", "dvae_recon.csv", "grain_maps.png", "verdict.md")]
    ours = {str(p) for ss in cpu.sample_sets.values() for p in (ss.npz, ss.grid, ss.metrics)}
    theirs = {str(p) for ss in other.sample_sets.values() for p in (ss.npz, ss.grid, ss.metrics)}
    assert ours and not ours & theirs
    assert not ({str(r.folder) for r in cpu.runs.values()}
                & {str(r.folder) for r in other.runs.values()})


def test_a_sample_set_knows_where_the_plan_shows_it_and_its_dvaes_scores():
    """`Plan.uses` and `Plan.recon_of`, what MLflow shows beside a set's metrics: the rows and
    figures that read the set, and the reconstruction JSON of its DVAE where the study scores
    that DVAE (the CPU study's Table 1 scores r = 0.5 and DiT's r = 1; with r = 1 taken out of
    Table 1, DiT's has none)."""
    plan = studies.plan(studies.load(CONFIGS / "cpu.yaml"))
    dit, d2it = (row.sample_sets[0] for row in plan.table_rows("table2")[:2])
    assert plan.uses(d2it)[0] == f"table2/{plan.table_rows('table2')[1].id}"
    assert plan.uses(dit)[0] == f"table2/{plan.table_rows('table2')[0].id}"
    for fig, sets in plan.curves.items():
        assert all(fig in plan.uses(ss) for ss in sets)
    dvae = plan.dvae_of(d2it.run)
    assert dvae.fine_ratio == 0.5 and plan.recon_of(d2it) == plan.recon_json(dvae)
    assert plan.recon_of(dit) == plan.recon_json(plan.dvae_of(dit.run))
    unscored = studies.plan(studies.load(CONFIGS / "cpu.yaml", ["recon.fine_ratios=[0.25]"]))
    assert unscored.recon_of(unscored.table_rows("table2")[0].sample_sets[0]) is None


def test_the_plan_as_a_table_reads_as_the_json_lines_say():
    """`--format table`: one line per row with the JSON lines' values (DiT-XL/2's 675.1M
    parameters, as published), then the study's cost line."""
    args = [sys.executable, "-m", "d2it.cli", "study", "plan", "--config",
            str(CONFIGS / "imagenet256.yaml")]
    proc = subprocess.run(args + ["--format", "table"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, *lines, footer = proc.stdout.splitlines()
    assert header.split()[:4] == ["row", "spec", "params_M", "GFLOPs"]
    rows = plan_rows(CONFIGS / "imagenet256.yaml")
    assert [line.split()[0] for line in lines] == [f"{r['table']}/{r['row']}" for r in rows]
    dit = lines[0].split()
    assert dit[2] == f"{675_129_632 / 1e6:.3g}" and dit[-1] == rows[0]["run_dirs"][0]
    assert f"{rows[0]['train_steps']} x {rows[0]['global_batch']}" in lines[0]
    cost = plan_cost(CONFIGS / "imagenet256.yaml")
    assert footer.startswith(f"imagenet256: {cost['runs']} runs, {cost['sample_sets']} sample sets")
