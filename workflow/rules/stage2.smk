# Stage 2: the DiT baseline on the fixed-rate VAE's latents (r = 1), D²iT and its grain model on the
# DVAE's latents at the configured fine ratio.
FINE_RATIO = f"{float(config['grain']['fine_ratio'])}"
LATENTS = {"dit": "runs/latents/r1.0.pt", "d2it": f"runs/latents/r{FINE_RATIO}.pt",
           "grain": f"runs/latents/r{FINE_RATIO}.pt"}
SECTIONS = {"dit": "dit", "d2it": "d2it", "grain": "grain_model"}


rule train_stage2:
    input:
        lambda w: LATENTS[w.kind],
    output:
        "runs/{kind}/final.pt",
    wildcard_constraints:
        kind="dit|d2it|grain",
    params:
        cfg=lambda w: section_digest("seed", "diffusion", SECTIONS[w.kind]),
    threads: 2
    resources:
        runtime=240,
    log:
        "logs/train_{kind}.log",
    shell:
        "OMP_NUM_THREADS={threads} d2it train {wildcards.kind} --config {CFG} --latents {input} "
        "--out runs/{wildcards.kind} > {log} 2>&1"


rule sample_d2it:
    input:
        run="runs/d2it/final.pt",
        grain="runs/grain/final.pt",
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
        "--run runs/d2it --grain-run runs/grain --latents {input.latents} --out {output.npz} > {log} 2>&1"


rule sample_dit:
    input:
        run="runs/dit/final.pt",
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
        "OMP_NUM_THREADS={threads} d2it sample --config {CFG} --run runs/dit --latents {input.latents} "
        "--out {output.npz} > {log} 2>&1"
