# The paper's tables with our numbers beside them (d2it/report/paper.yaml lists each table's rows).
from d2it.report.tables import sample_sets


rule paper_table:
    input:
        lambda w: expand("results/metrics/samples/{name}.json", name=sample_sets(f"table{w.n}")),
    output:
        "results/table{n}.csv",
    wildcard_constraints:
        n="2|3|4|5",
    log:
        "logs/table{n}.log",
    shell:
        "d2it report table table{wildcards.n} --out {output} {input} > {log} 2>&1"


# Figs. 3 and 4: D²iT samples beside their predicted grain maps (red = fine, blue = coarse); Fig. 4
# is class-conditional with guidance, one row per class.
FIGURE_SAMPLES = {"3": ("d2it_predicted", ""), "4": ("d2it_predicted_g", "--by-class")}


rule samples_figure:
    input:
        lambda w: f"results/samples/{FIGURE_SAMPLES[w.n][0]}.npz",
    output:
        report("results/fig{n}.png", category="Figures"),
    wildcard_constraints:
        n="3|4",
    params:
        by_class=lambda w: FIGURE_SAMPLES[w.n][1],
    log:
        "logs/fig{n}.log",
    shell:
        "d2it report samples --samples {input} {params.by_class} --out {output} > {log} 2>&1"
