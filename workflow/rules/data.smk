# The study's images (generated for the CPU study, prepared by you otherwise) and their entropy
# thresholds.
if STUDY["data"]["synth"] is not None:

    rule synth_data:
        output:
            STUDY["data"]["manifest"],
        params:
            config=study_config,
            data=identity(studies.data_identity),
        log:
            f"{LOGS}/synth_data.log",
        shell:
            "d2it data synth --config {params.config} > {log} 2>&1"


rule grain_thresholds:
    input:
        STUDY["data"]["manifest"],
    output:
        STUDY["grain"]["thresholds"],
    params:
        config=study_config,
        rule=identity(studies.threshold_identity),
    log:
        f"{LOGS}/grain_thresholds.log",
    shell:
        "d2it grain thresholds --config {params.config} > {log} 2>&1"
