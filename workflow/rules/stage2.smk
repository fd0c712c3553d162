# Stage 2: the DiT baseline on the fixed-rate VAE's latents (r = 1), D²iT and its grain model on the
# DVAE's latents at the configured fine ratio.
FINE_RATIO = f"{float(config['grain']['fine_ratio'])}"
LATENTS = {"dit": f"{DVAE_RUNS}/r1.0/latents.pt", "d2it": f"{DVAE_RUNS}/r{FINE_RATIO}/latents.pt",
           "grain": f"{DVAE_RUNS}/r{FINE_RATIO}/latents.pt"}


rule train_stage2:
    input:
        lambda w: LATENTS[w.kind],
    output:
        f"{STAGE2_RUNS}/{{kind}}/final.pt",
    wildcard_constraints:
        kind="dit|d2it|grain",
    threads: 2
    resources:
        runtime=240,
    log:
        "logs/train_{kind}.log",
    shell:
        "OMP_NUM_THREADS={threads} d2it train {wildcards.kind} --config {CFG} --latents {input} "
        "--out $(dirname {output}) > {log} 2>&1"


rule sample_d2it:
    input:
        run=f"{STAGE2_RUNS}/d2it/final.pt",
        grain=f"{STAGE2_RUNS}/grain/final.pt",
        latents=LATENTS["d2it"],
    output:
        npz="results/samples/d2it_{source}.npz",
        json="results/samples/d2it_{source}.json",
        grid=report("results/samples/d2it_{source}.png", category="Samples"),
    params:
        cfg=section_digest("diffusion", "sample"),
    threads: 2
    log:
        "logs/sample/d2it_{source}.log",
    shell:
        "OMP_NUM_THREADS={threads} d2it sample --config {CFG} --set sample.grain_source={wildcards.source} "
        "--run-dir $(dirname {input.run}) --grain-run $(dirname {input.grain}) --latents {input.latents} "
        "--out {output.npz} > {log} 2>&1"


rule sample_dit:
    input:
        run=f"{STAGE2_RUNS}/dit/final.pt",
        latents=LATENTS["dit"],
    output:
        npz="results/samples/dit.npz",
        json="results/samples/dit.json",
        grid=report("results/samples/dit.png", category="Samples"),
    params:
        cfg=section_digest("diffusion", "sample"),
    threads: 2
    log:
        "logs/sample/dit.log",
    shell:
        "OMP_NUM_THREADS={threads} d2it sample --config {CFG} --run-dir $(dirname {input.run}) --latents {input.latents} "
        "--out {output.npz} > {log} 2>&1"
