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
