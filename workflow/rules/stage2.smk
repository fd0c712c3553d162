# Stage 2: the DiT baseline on the fixed-rate VAE's latents (r = 1), D²iT and its grain model on the
# DVAE's latents at the configured fine ratio.
FINE_RATIO = f"{float(config['grain']['fine_ratio'])}"
LATENTS = {"dit": f"{DVAE_RUNS}/r1.0/latents.pt", "d2it": f"{DVAE_RUNS}/r{FINE_RATIO}/latents.pt",
           "grain": f"{DVAE_RUNS}/r{FINE_RATIO}/latents.pt"}
VARIANTS = config["study"]["variants"]  # D²iT ablations: name -> d2it overrides


def variant_dir(name):
    """A variant's run folder, named by its overrides too, so an edited variant trains anew."""
    if name not in VARIANTS:
        raise ValueError(f"study.variants has no variant {name!r} (known: {', '.join(VARIANTS)})")
    return f"{STAGE2_RUNS}/d2it-{name}-{digest(VARIANTS[name])[:8]}"


def variant_args(name, folder_hash):
    if variant_dir(name) != f"{STAGE2_RUNS}/d2it-{name}-{folder_hash}":
        raise ValueError(f"d2it-{name}-{folder_hash}: not the current definition of study.variants.{name}")
    return " ".join(f"--set d2it.{key}={value}" for key, value in VARIANTS[name].items())


rule train_stage2:
    input:
        lambda w: LATENTS[w.kind],
    output:
        f"{STAGE2_RUNS}/{{kind}}/final.pt",
    wildcard_constraints:
        kind="dit|d2it|grain",
    params:
        d2it=d2it_cmd,
    threads: 2
    resources:
        runtime=240,
    log:
        "logs/train_{kind}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} train {wildcards.kind} --config {CFG} --latents {input} "
        "--out $(dirname {output}) > {log} 2>&1"


rule train_variant:
    input:
        LATENTS["d2it"],
    output:
        f"{STAGE2_RUNS}/d2it-{{variant}}-{{hash}}/final.pt",
    wildcard_constraints:
        variant="[a-z0-9_]+",
        hash="[0-9a-f]{8}",
    params:
        args=lambda w: variant_args(w.variant, w.hash),
        d2it=d2it_cmd,
    threads: 2
    resources:
        runtime=240,
    log:
        "logs/train_d2it-{variant}-{hash}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} train d2it --config {CFG} {params.args} --latents {input} "
        "--out $(dirname {output}) > {log} 2>&1"


def sample_set(name):
    """(inputs, CLI arguments) of a sample set: dit | d2it[-variant]_{predicted,gt,random}, `_g` = guided."""
    model, guided = name.removesuffix("_g"), name.endswith("_g")
    model, _, source = model.partition("_") if model.startswith("dit") else model.rpartition("_")
    kind, _, variant = model.partition("-")
    run = variant_dir(variant) if variant else f"{STAGE2_RUNS}/{kind}"
    inputs = {"run": f"{run}/final.pt", "latents": LATENTS[kind]}
    args = f"--run-dir {run} --latents {LATENTS[kind]}"
    if kind == "d2it":
        inputs["grain"] = f"{STAGE2_RUNS}/grain/final.pt"
        args += f" --grain-run {STAGE2_RUNS}/grain --set sample.grain_source={source}"
    if guided:
        args += f" --set diffusion.cfg_scale={config['study']['cfg_scale']}"
    return inputs, args


rule sample:
    input:
        unpack(lambda w: sample_set(w.name)[0]),
    output:
        npz="results/samples/{name}.npz",
        json="results/samples/{name}.json",
        grid=report("results/samples/{name}.png", category="Samples"),
    wildcard_constraints:
        name="(dit|d2it(-[a-z0-9_]+)?_(predicted|gt|random))(_g)?",
    params:
        cfg=section_digest("diffusion", "sample"),
        args=lambda w: sample_set(w.name)[1],
        d2it=d2it_cmd,
    threads: 2
    log:
        "logs/sample/{name}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} sample --config {CFG} {params.args} --out {output.npz} > {log} 2>&1"
