import hashlib
from pathlib import Path

import yaml

from d2it.config import digest, validate

# Validate with the harness's own schema (fills defaults), then hand every job the resolved config
# through a content-addressed file: a changed key reaches the CLI and, via params, re-runs the job.
validate(config, "snakemake config")
CONFIG_DIGEST = digest(config)
CFG = f".snakemake/d2it-config/{CONFIG_DIGEST[:16]}.yaml"
if not Path(CFG).exists():
    Path(CFG).parent.mkdir(parents=True, exist_ok=True)
    Path(CFG).write_text(yaml.safe_dump(config, sort_keys=True))


def section_digest(*keys):
    """Digest of the config sections a rule depends on (a rule param, so edits re-run it)."""
    return digest({k: config[k] for k in keys})[:16]


# Training runs live in folders named by the digest of the config sections they depend on: a changed
# config trains into a new folder (the old run stays), an unchanged one resumes its checkpoints.
DVAE_RUNS = f"runs/dvae/{section_digest('seed', 'data', 'grain', 'dvae')}"
STAGE2_RUNS = f"runs/stage2/{section_digest('seed', 'data', 'grain', 'dvae', 'diffusion', 'dit', 'd2it', 'grain_model')}"


def d2it_cmd(wildcards, resources):
    """The CLI of a training or sampling job: torchrun over its GPUs when the profile gives it several
    (resources.gpu, SLURM's --gpus), else the plain `d2it`."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    return f"torchrun --standalone --nproc_per_node {gpus} -m d2it.cli" if gpus > 1 else "d2it"
