# Stage 1: one DVAE per fine ratio and seed (r = 1 is the fixed-rate VAE of the DiT baseline),
# its held-out reconstructions and its latent cache.
rule train_dvae:
    conda:
        CONDA_ENV,
    input:
        STUDY["data"]["manifest"],
        STUDY["grain"]["thresholds"],
    output:
        f"{RUNS}/{{run}}/final.pt",
    wildcard_constraints:
        run=one_of(DVAES),
    params:
        config=study_config,
        d2it=d2it_cmd,
        ratio=lambda w: DVAES[w.run].fine_ratio,
        seed=lambda w: DVAES[w.run].seed,
    threads: STUDY["threads"]
    resources:
        runtime=120,
    log:
        f"{LOGS}/{{run}}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} train dvae --config {params.config} "
        "--fine-ratio {params.ratio} --seed {params.seed} > {log} 2>&1"


rule eval_recon:
    conda:
        CONDA_ENV,
    input:
        recon_inputs,
    output:
        json=f"{RESULTS}/metrics/dvae/{{name}}.json",
    params:
        config=study_config,
        metrics=identity(studies.metrics_identity),
        ratio=lambda w: DVAES[f"dvae/{w.name}"].fine_ratio,
        seed=lambda w: DVAES[f"dvae/{w.name}"].seed,
    log:
        f"{LOGS}/eval_recon/{{name}}.log",
    shell:
        "d2it eval recon --config {params.config} --fine-ratio {params.ratio} --seed {params.seed} "
        "--out {output.json} > {log} 2>&1"


rule encode_latents:
    conda:
        CONDA_ENV,
    input:
        f"{RUNS}/{{run}}/final.pt",
    output:
        f"{RUNS}/{{run}}/latents/meta.json",
    wildcard_constraints:
        run=one_of(DVAES),
    params:
        config=study_config,
        ratio=lambda w: DVAES[w.run].fine_ratio,
        seed=lambda w: DVAES[w.run].seed,
    log:
        f"{LOGS}/encode/{{run}}.log",
    shell:
        "d2it encode --config {params.config} --fine-ratio {params.ratio} --seed {params.seed} "
        "> {log} 2>&1"


rule dvae_table:
    conda:
        CONDA_ENV,
    input:
        recon_table_inputs,
    output:
        report(str(PLAN.recon_csv), caption="../report/dvae_table.rst", category="Tables"),
    params:
        metrics=[str(PLAN.recon_json(run)) for run in PLAN.recon],
    log:
        f"{LOGS}/dvae_table.log",
    shell:
        "d2it report recon --out {output} {params.metrics} > {log} 2>&1"
