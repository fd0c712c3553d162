# Metrics of every sample file against the configured reference (cached statistics under data/reference).


rule sample_metrics:
    input:
        samples="results/samples/{name}.npz",
        manifest=config["data"]["manifest"],
    output:
        "results/metrics/samples/{name}.json",
    params:
        cfg=section_digest("metrics"),
    threads: 2
    log:
        "logs/metrics/{name}.log",
    shell:
        "OMP_NUM_THREADS={threads} d2it metrics --config {CFG} --samples {input.samples} --out {output} > {log} 2>&1"
