rule synth_data:
    output:
        config["data"]["manifest"],
    params:
        cfg=section_digest("data"),
    log:
        "logs/synth_data.log",
    shell:
        "d2it data synth --config {CFG} > {log} 2>&1"


rule grain_thresholds:
    input:
        config["data"]["manifest"],
    output:
        config["grain"]["thresholds"],
    params:
        cfg=section_digest("data", "grain"),
    log:
        "logs/grain_thresholds.log",
    shell:
        "d2it grain thresholds --config {CFG} > {log} 2>&1"
