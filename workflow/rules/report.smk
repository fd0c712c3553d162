# The study's tables beside the paper's numbers (d2it/report/paper.yaml), and its sample figures.


def table_inputs(wildcards) -> list:
    return [ss.metrics for row in PLAN.table_rows(wildcards.table) for ss in row.sample_sets]


rule paper_table:
    input:
        table_inputs,
    output:
        report(f"{RESULTS}/{{table}}.csv", category="Tables"),
    wildcard_constraints:
        table=one_of(STUDY["tables"]),
    log:
        f"{LOGS}/{{table}}.log",
    shell:
        "d2it report table --config {CFG} {wildcards.table} --out {output} > {log} 2>&1"


# Fig. 3: samples beside their grain maps (red = fine, blue = coarse); Fig. 4: one row per class.
rule samples_figure:
    input:
        lambda w: PLAN.figures[w.fig].npz,
    output:
        report(f"{RESULTS}/{{fig}}.png", category="Figures"),
    wildcard_constraints:
        fig=one_of(STUDY["figures"]),
    params:
        by_class=lambda w: "--by-class" if STUDY["figures"][w.fig]["classes"] else "",
        per_row=lambda w: STUDY["figures"][w.fig]["per_row"],
    log:
        f"{LOGS}/{{fig}}.log",
    shell:
        "d2it report samples --samples {input} {params.by_class} --per-row {params.per_row} "
        "--out {output} > {log} 2>&1"
