# Stage 1: one DVAE per fine ratio r (r = 1 is the fixed-rate VAE of the DiT baseline).


rule train_dvae:
    input:
        config["data"]["manifest"],
        config["grain"]["thresholds"],
    output:
        f"{DVAE_RUNS}/r{{ratio}}/final.pt",
    params:
        d2it=d2it_cmd,
    threads: 2
    resources:
        runtime=120,
    log:
        "logs/train_dvae/r{ratio}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.d2it} train dvae --config {CFG} --set grain.fine_ratio={wildcards.ratio} "
        f"--out {DVAE_RUNS}/r{{wildcards.ratio}} > {{log}} 2>&1"


rule eval_recon:
    input:
        f"{DVAE_RUNS}/r{{ratio}}/final.pt",
    output:
        "results/metrics/dvae/r{ratio}.json",
    params:
        cfg=section_digest("metrics"),
    log:
        "logs/eval_recon/r{ratio}.log",
    shell:
        "d2it eval recon --config {CFG} --run-dir $(dirname {input}) --out {output} > {log} 2>&1"


rule encode_latents:
    input:
        f"{DVAE_RUNS}/r{{ratio}}/final.pt",
    output:
        f"{DVAE_RUNS}/r{{ratio}}/latents.pt",
    log:
        "logs/encode/r{ratio}.log",
    shell:
        "d2it encode --config {CFG} --run-dir $(dirname {input}) --out {output} > {log} 2>&1"


rule dvae_table:
    input:
        recon=expand("results/metrics/dvae/r{ratio}.json", ratio=config["study"]["fine_ratios"]),
    output:
        "results/dvae_recon.csv",
    log:
        "logs/dvae_table.log",
    shell:
        "d2it report recon --out {output} {input.recon} > {log} 2>&1"
