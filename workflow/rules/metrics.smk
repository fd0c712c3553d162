# Metrics of every sample set against the study's reference (statistics cached in
# metrics.reference_dir).


rule sample_metrics:
    conda:
        CONDA_ENV,
    input:
        unpack(metrics_inputs),
    output:
        json=f"{RESULTS}/metrics/{{name}}.json",
    wildcard_constraints:
        name=one_of(PLAN.sample_sets),
    params:
        config=study_config,
        metrics=identity(studies.metrics_identity),
    threads: STUDY["threads"]
    log:
        f"{LOGS}/metrics/{{name}}.log",
    shell:
        "OMP_NUM_THREADS={threads} d2it metrics --config {params.config} "
        "--sample-set {wildcards.name} --out {output.json} > {log} 2>&1"
