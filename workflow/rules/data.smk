# The study's images (generated for the CPU study, prepared by you otherwise) and their entropy
# thresholds.
if STUDY["data"]["synth"] is not None:

    rule synth_data:
        conda:
            CONDA_ENV,
        output:
            STUDY["data"]["manifest"],
        params:
            config=study_config,
            data=identity(studies.data_identity),
        log:
            f"{LOGS}/synth_data.log",
        shell:
            "d2it data synth --config {params.config} > {log} 2>&1"

elif not Path(STUDY["data"]["manifest"]).exists():
    # Data only the user can bring. While it is missing, this rule lets `snakemake -n` preview
    # the whole study; run for real, its job stops the workflow at once with one line naming the
    # command that prepares it. Defined only then: Snakemake removes a job's outputs before it
    # runs it (`-F`), and the user's manifest must never be one.
    localrules:
        prepare_data,

    rule prepare_data:
        conda:
            CONDA_ENV,
        retries: 0
        output:
            STUDY["data"]["manifest"],
        params:
            message=lambda w, output: (
                f"d2it: error: {output[0]} does not exist: prepare the data first with "
                f"`d2it data prepare --src /path/to/your/copy --out {output[0]}` "
                f"(the header of {STUDY_FILE} gives the held-out fraction)"),
        shell:
            "printf '%s\\n' {params.message:q} >&2; exit 2"


if STUDY["metrics"]["reference"].endswith(".npz") and not Path(
        STUDY["metrics"]["reference"]).exists():
    localrules:
        reference_batch,

    rule reference_batch:
        conda:
            CONDA_ENV,
        retries: 0
        output:
            STUDY["metrics"]["reference"],
        params:
            message=lambda w, output: (
                f"d2it: error: {output[0]} does not exist: put the ADM reference batch there "
                f"(openai/guided-diffusion's evaluations; the header of {STUDY_FILE} names it)"),
        shell:
            "printf '%s\\n' {params.message:q} >&2; exit 2"


rule grain_thresholds:
    conda:
        CONDA_ENV,
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
