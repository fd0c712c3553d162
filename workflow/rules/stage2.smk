# Stage 2: every (spec, seed) the study's rows and figures name, trained once on the latent cache
# of its DVAE, and every sample set drawn from them.
MODELS = runs_of("dit|d2it|grain")


def model_args(wildcards) -> str:
    run = MODELS[wildcards.run]
    ratio = f" --fine-ratio {run.fine_ratio}" if run.stage == "grain" else ""
    return f"--spec {run.spec} --seed {run.seed}{ratio}"


rule train_model:
    input:
        lambda w: PLAN.latents(MODELS[w.run]) / "meta.json",
    output:
        f"{RUNS}/{{run}}/final.pt",
    wildcard_constraints:
        run=one_of(MODELS),
    params:
        d2it=d2it_cmd,
        args=model_args,
    threads: STUDY["threads"]
    resources:
        runtime=240,
    log:
        f"{LOGS}/{{run}}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} train model --config {CFG} {params.args} "
        "> {log} 2>&1"


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


rule sample:
    input:
        unpack(sample_inputs),
    output:
        npz=f"{RUNS}/samples/{{name}}.npz",
        json=f"{RUNS}/samples/{{name}}.json",
        grid=report(f"{RESULTS}/samples/{{name}}.png", category="Samples"),
    wildcard_constraints:
        name=one_of(PLAN.sample_sets),
    params:
        d2it=d2it_cmd,
    threads: STUDY["threads"]
    log:
        f"{LOGS}/sample/{{name}}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} sample --config {CFG} "
        "--sample-set {wildcards.name} > {log} 2>&1"
