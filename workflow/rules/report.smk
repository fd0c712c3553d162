# The study's tables beside the paper's numbers (d2it/report/paper.yaml), and its sample figures.


rule paper_table:
    conda:
        CONDA_ENV,
    input:
        table_inputs,
    output:
        csv=report(f"{RESULTS}/{{table}}.csv", caption="../report/table.rst", category="Tables"),
        rows=directory(f"{RESULTS}/rows/{{table}}"),
    wildcard_constraints:
        table=one_of(STUDY["tables"]),
    params:
        config=study_config,
    log:
        f"{LOGS}/{{table}}.log",
    shell:
        "d2it report table --config {params.config} {wildcards.table} --out {output.csv} "
        "> {log} 2>&1"


# Fig. 5 (reconstruction vs generation over fine ratios), Fig. 6 (FD over training steps).
rule curve_figure:
    conda:
        CONDA_ENV,
    input:
        curve_inputs,
    output:
        png=report(f"{RESULTS}/{{fig}}.png", caption="../report/curve.rst", category="Figures"),
        csv=f"{RESULTS}/{{fig}}.csv",
        series=f"{RESULTS}/{{fig}}_series.csv",
    wildcard_constraints:
        fig=one_of(PLAN.curves),
    params:
        config=study_config,
    log:
        f"{LOGS}/{{fig}}.log",
    shell:
        "d2it report curve --config {params.config} {wildcards.fig} --out {output.png} > {log} 2>&1"


# The grain model against the ground truth (one D²iT run sampled both ways).
if PLAN.grain_check():

    rule grain_maps_figure:
        conda:
            CONDA_ENV,
        input:
            unpack(lambda w: samples_of("grain_maps", PLAN.grain_check())),
        output:
            png=report(str(PLAN.grain_maps_png), caption="../report/grain_maps.rst",
                       category="Figures"),
            csv=str(PLAN.grain_maps_png.with_suffix(".csv")),
        params:
            config=study_config,
        log:
            f"{LOGS}/grain_maps.log",
        shell:
            "d2it report grain-maps --config {params.config} --out {output.png} > {log} 2>&1"


# One verdict per claim of the paper (d2it/report/verdict.py states the rule).
rule verdict:
    conda:
        CONDA_ENV,
    input:
        verdict_inputs,
    output:
        md=report(f"{RESULTS}/verdict.md", caption="../report/verdict.rst", category="Verdicts"),
        json=f"{RESULTS}/verdict.json",
    params:
        config=study_config,
    log:
        f"{LOGS}/verdict.log",
    shell:
        "d2it report verdict --config {params.config} > {log} 2>&1"


# Fig. 3: samples beside their grain maps (red = fine, blue = coarse); Fig. 4: one row per class.
rule samples_figure:
    conda:
        CONDA_ENV,
    input:
        unpack(lambda w: samples_of(w.fig, [PLAN.figures[w.fig]])),
    output:
        report(f"{RESULTS}/{{fig}}.png", caption="../report/samples_figure.rst",
               category="Figures"),
    wildcard_constraints:
        fig=one_of(PLAN.figures),
    params:
        config=study_config,
        by_class=lambda w: "--by-class" if STUDY["figures"][w.fig]["classes"] else "",
        per_row=lambda w: STUDY["figures"][w.fig]["per_row"],
        title=lambda w: (f"{w.fig.replace('fig', 'Fig. ')}: "
                         f"{studies.spec_label(STUDY, STUDY['figures'][w.fig]['spec'])}, "
                         f"study {PLAN.name}"),
    log:
        f"{LOGS}/{{fig}}.log",
    shell:
        "d2it report samples --config {params.config} --samples {input.samples} {params.by_class} "
        "--per-row {params.per_row} --title {params.title:q} --out {output} > {log} 2>&1"


# The finished study copied to results/published/<study>/, the folder git and DVC keep (not part
# of `all`: `snakemake --cores all publish`). Its output is the record of the copy, under
# results/<study>/: git never tracks a file at a Snakemake output path.
rule publish:
    conda:
        CONDA_ENV,
    input:
        [str(path) for path in PLAN.targets()],
    output:
        f"{RESULTS}/published.json",
    params:
        config=study_config,
    log:
        f"{LOGS}/publish.log",
    shell:
        "d2it report publish --config {params.config} > {log} 2>&1"
