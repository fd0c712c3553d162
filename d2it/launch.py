"""The launcher of a workflow job's `d2it` command: the plain CLI on one device, torchrun over the
GPUs of one node, or one torchrun per node of a SLURM allocation meeting at its first node.

torchrun's agent forwards only SIGTERM, SIGINT, SIGHUP and SIGQUIT to its workers by default; any
other signal ends the agent, and with it the workers, before they checkpoint. SLURM's pre-emption
warning (the profile's `--signal=USR1@600`) is therefore added to the signals it forwards: every
worker gets it, the ranks agree to stop after the step they are in, rank 0 writes the checkpoint,
and the resubmitted job resumes from it. torchrun waits 30 s for its workers after forwarding a
signal: a checkpoint must be written in that time (DiT-XL with AdamW: about 11 GB).
"""
from __future__ import annotations

SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
PORT = 29500  # the rendezvous port on the allocation's first node


def command(gpus: int, nodes: int = 1) -> str:
    """The shell words that run `d2it <args>` on `gpus` GPUs in all over `nodes` nodes."""
    if gpus <= 1 and nodes <= 1:
        return "d2it"
    if gpus % nodes:
        raise ValueError(f"gpu = {gpus} does not split over nodes = {nodes}")
    torchrun = f"torchrun --signals-to-handle {SIGNALS} --nproc-per-node {gpus // nodes}"
    if nodes == 1:
        return f"{torchrun} --standalone -m d2it.cli"
    # The job itself runs in a one-task step on the first node: --overlap lets the step of one
    # torchrun per node share that node's resources with it.
    first_node = "$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"
    return (f"srun --overlap --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 "
            f"--kill-on-bad-exit=1 {torchrun} --nnodes {nodes} --rdzv-backend c10d "
            f"--rdzv-endpoint \"{first_node}:{PORT}\" --rdzv-id \"$SLURM_JOB_ID\" -m d2it.cli")
