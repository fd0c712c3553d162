# d2it-repro workflow. The study is one config file, chosen on the command line and used alone:
#   snakemake --cores all                                            the CPU study (config/cpu.yaml)
#   snakemake --cores all --configfile config/ffhq256.yaml           a paper study
#   snakemake --cores all results/cpu/table2.csv                     one target
# Every target comes from the study's plan (`d2it study plan`); every step calls the `d2it` CLI.
from snakemake.utils import min_version

min_version("9.0")

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


onstart:
    # the MLflow store, the study's experiment and its parent run, made once before jobs start
    # side by side (each job would otherwise race to create them)
    from d2it import tracking

    tracking.prepare(STUDY["tracking"], STUDY["name"], STUDY)


onsuccess:
    # the parent run ends with the workflow, holding what it made (tables, figures, verdicts)
    from d2it import tracking

    tracking.finish(STUDY["tracking"], STUDY["name"], "FINISHED", [*PLAN.targets(), CFG])


onerror:
    from d2it import tracking

    tracking.finish(STUDY["tracking"], STUDY["name"], "FAILED", [*PLAN.targets(), CFG])


rule all:
    default_target: True
    input:
        [str(path) for path in PLAN.targets()],


include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/report.smk"
