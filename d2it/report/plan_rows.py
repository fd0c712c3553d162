"""A study row as `d2it study plan` shows it: the spec resolved, its runs, sample sets and
protocol, parameters, FLOPs and GPU-hours."""
from __future__ import annotations

from d2it.cost import forward_flops, gpu_hours, rounded, run_flops, sample_set_flops
from d2it.metrics.extractors import protocol_key
from d2it.report.paper import paper_method
from d2it.study import (Plan, Row, model_architecture, parameters, spec_label,
                        train_settings)


def describe(result: Plan, row: Row) -> dict:
    """One row of `d2it study plan`: the spec resolved, its runs, sample sets and protocol, with
    FLOPs per forward and the GPU-hours of its runs and sets (d2it.cost)."""
    study = result.study
    spec = study["specs"][row.spec]
    arch = model_architecture(study, row.spec)
    content = parameters(study, row.spec)
    predicted = row.settings["grain_source"] == "predicted"
    grain = parameters(study, spec["grain_model"]) if predicted else 0
    train = train_settings(study, row.spec)
    s = row.settings
    return {
        "study": result.name, "table": row.table, "row": row.id,
        "paper_method": paper_method(row.table, row.id), "spec": row.spec,
        "label": spec_label(study, row.spec), "kind": spec["kind"], "size": spec["size"],
        "depth": arch["depth"], "refine_depth": arch.get("refine_depth"),
        "patch": arch.get("patch_size", 2), "fine_ratio": row.sample_sets[0].run.fine_ratio,
        "params": {"content": content, "grain": grain, "total": content + grain},
        "train_steps": train["steps"], "global_batch": train["batch_size"],
        "seeds": [ss.run.seed for ss in row.sample_sets],
        "run_dirs": [str(ss.run.folder) for ss in row.sample_sets],
        "grain_run_dirs": [str(ss.grain_run.folder) for ss in row.sample_sets if ss.grain_run],
        "dvae_run_dirs": [str(result.dvae_of(ss.run).folder) for ss in row.sample_sets],
        "sample_sets": [ss.name for ss in row.sample_sets],
        "sampler": s["sampler"], "sampling_steps": s["steps"], "n": s["n"],
        "cfg_scale": s["cfg_scale"], "grain_source": s["grain_source"],
        "protocol": protocol_key(study["metrics"], s["n"]),
        "gflops_per_forward": {
            "content": forward_flops(arch) / 1e9,
            "grain": forward_flops(model_architecture(study, spec["grain_model"])) / 1e9
            if predicted else 0.0},
        "gpu_hours": {
            # the row's content and grain-model runs (its DVAEs are in the study's cost line)
            "train": rounded(sum(gpu_hours(run_flops(run, study["data"]["resolution"]))
                                 for ss in row.sample_sets
                                 for run in (ss.run, ss.grain_run) if run is not None)),
            "sample": rounded(sum(gpu_hours(sample_set_flops(ss)) for ss in row.sample_sets))},
    }


def plan_table(rows: list[dict], cost: dict) -> str:
    """`d2it study plan --format table`: one line per row as a person reads a plan (parameters in
    millions, GFLOPs per forward, steps x global batch, samples, sampler and protocol, the first
    seed's run folder), then the study's cost."""
    import pandas as pd

    table = pd.DataFrame({
        "row": [f"{r['table']}/{r['row']}" for r in rows],
        "spec": [r["spec"] for r in rows],
        "params_M": [r["params"]["total"] / 1e6 for r in rows],
        "GFLOPs": [sum(r["gflops_per_forward"].values()) for r in rows],
        "steps x batch": [f"{r['train_steps']} x {r['global_batch']}" for r in rows],
        "seeds": [len(r["seeds"]) for r in rows],
        "n": [r["n"] for r in rows],
        "sampler": [f"{r['sampler']} {r['sampling_steps']}"
                    + (f" cfg {r['cfg_scale']:g}" if r["cfg_scale"] != 1 else "") for r in rows],
        "protocol": [r["protocol"] for r in rows],
        "run folder": [r["run_dirs"][0] for r in rows],
    })
    hours = cost["gpu_hours"]
    footer = (f"{cost['study']}: {cost['runs']} runs, {cost['sample_sets']} sample sets, "
              f"{hours['total']:.3g} GPU-hours ({cost['gpu_hours_assume']})")
    body = table.to_string(index=False, float_format=lambda v: f"{v:.3g}")
    return f"{body}\n{footer}"
