# d2it-repro workflow: `snakemake --cores all <target>`; every step calls the `d2it` CLI.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/report.smk"
