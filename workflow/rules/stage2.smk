# Stage 2: every (spec, seed) the study's rows and figures name, trained once on the latent cache
# of its DVAE, and every sample set drawn from them.
rule train_model:
    conda:
        CONDA_ENV,
    input:
        lambda w: PLAN.latents(MODELS[w.run]) / "meta.json",
    output:
        weights(f"{RUNS}/{{run}}/final.pt"),
    wildcard_constraints:
        run=one_of(MODELS),
    params:
        config=study_config,
        d2it=d2it_cmd,
        args=model_args,
    threads: STUDY["threads"]
    resources:
        runtime=240,
    log:
        f"{LOGS}/{{run}}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} train model --config {params.config} "
        "{params.args} > {log} 2>&1"


rule sample:
    conda:
        CONDA_ENV,
    input:
        unpack(sample_inputs),
    output:
        npz=f"{RUNS}/samples/{{name}}.npz",
        json=f"{RUNS}/samples/{{name}}.json",
        grid=report(f"{RESULTS}/samples/{{name}}.png", caption="../report/sample_grid.rst",
                    category="Samples"),
    wildcard_constraints:
        name=one_of(PLAN.sample_sets),
    params:
        config=study_config,
        d2it=d2it_cmd,
    threads: STUDY["threads"]
    log:
        f"{LOGS}/sample/{{name}}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} sample --config {params.config} "
        "--sample-set {wildcards.name} > {log} 2>&1"
