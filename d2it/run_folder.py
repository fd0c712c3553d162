"""A run's folder: its record (`run.json`, claimed once), the lock that keeps a second trainer out,
checkpoints, the EMA snapshots a study asked for and `final.pt`, and how each is read back."""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from d2it.config import digest
from d2it.errors import D2itError
from d2it.files import read_json, save_torch_atomic, write_json_atomic

log = logging.getLogger(__name__)
CKPT_GLOB = "ckpt-*.pt"


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def claim_run_dir(out: Path, record: dict, write: bool = True) -> None:
    """Write the run's record to out/run.json; refuse a folder that holds another run (another
    identity, or the same one made from other input files)."""
    claim = {"identity": record["identity"], "inputs": record.get("inputs", {})}
    path = out / "run.json"
    if path.exists():
        old = read_json(path, "run record", "move the folder away to start the run afresh")
        if old.get("digest") != digest(claim):
            before = old.get("record", {})
            before = {"identity": before.get("identity"), "inputs": before.get("inputs", {})}
            changes = "; ".join(_diff(before, claim)[:5])
            raise D2itError(f"{out} holds a run of a different config ({changes}): choose another "
                            "--out or delete the folder")
        return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"digest": digest(claim),
                                 "identity_digest": record["digest"], "record": record})


def lock_run_dir(out: Path):
    """An exclusive lock on a run folder for as long as the returned file stays open: a second
    trainer in the same folder (after a stale Snakemake lock and --unlock, or a SLURM requeue
    while the old job still runs) is refused instead of interleaving with the first. The kernel
    drops the lock with its process, so a killed or requeued job never leaves a stale one."""
    lock = open(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise D2itError(f"{out}: {holder} is training in this folder; wait for it to end or "
                        "stop it") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
    lock.flush()
    return lock


@dataclass
class Checkpoints:
    folder: Path
    keep: int

    def newest(self) -> dict | None:
        for path in sorted(self.folder.glob(CKPT_GLOB), reverse=True):
            try:
                # mapped, not read: a 675M model's checkpoint (10.8 GB) beside the live model
                # and its EMA would otherwise need 24 GB at once
                return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            except Exception as e:  # noqa: BLE001 - a damaged file: fall back to the one before
                log.warning("skipping unreadable checkpoint %s (%s)", path, e)
        return None

    def newest_step(self) -> int | None:
        """The step of the newest checkpoint file (unread), None if there is none."""
        paths = sorted(self.folder.glob(CKPT_GLOB))
        return int(paths[-1].stem.split("-")[1]) if paths else None

    def save(self, state: dict, step: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{step:09d}.pt"
        save_torch_atomic(path, state, fsync=True)
        for old in sorted(self.folder.glob(CKPT_GLOB))[:-max(self.keep, 1)]:
            old.unlink()
        return path

    def remove_partial(self) -> None:
        """Delete the temporary files a killed writer left."""
        for stale in self.folder.glob(".*.tmp*"):
            stale.unlink()

    def finished(self) -> None:
        """final.pt is written: keep 0 deletes every checkpoint (a finished run needs none)."""
        if self.keep == 0:
            for path in self.folder.glob(CKPT_GLOB):
                path.unlink()


def snapshot_path(out: Path, step: int) -> Path:
    return Path(out) / "snapshots" / f"ema-{step:09d}.pt"


def load_snapshot(out: Path, step: int) -> dict:
    """The EMA weights (the weights without EMA) a run kept at `step`."""
    path = snapshot_path(out, step)
    if not path.is_file():
        kept = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("ema-*.pt"))
        raise D2itError(f"{out}: no weights kept at step {step} (kept: {kept or 'none'}); a run "
                        "keeps the steps its study named when it trained: retrain it")
    return load_weights(path, weights_only=True)


def load_weights(path: Path, weights_only: bool):
    """torch.load of a run's file, whose damage (truncated by a kill or a full disk, or not a
    torch file) is one error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise D2itError(f"{path}: unreadable ({reason}); retrain the run or restore the "
                        "file") from None


def fit_weights(model: torch.nn.Module, weights: dict, path: Path, kind: str) -> None:
    """Load `weights` (read from `path`) into `model`, built from the run's record; weights of
    another network (a file swapped or edited) are one error naming the file."""
    own = model.state_dict()
    wrong = sorted(k for k in own.keys() | weights.keys()
                   if k not in own or k not in weights or own[k].shape != weights[k].shape)
    if wrong:
        raise D2itError(f"{path}: its weights do not fit the {kind} network its record describes "
                        f"({len(wrong)} tensors missing, extra or of another shape, e.g. "
                        f"{wrong[0]}); retrain the run or restore the file")
    model.load_state_dict(weights)


def load_final(out: Path, ema: bool = True) -> tuple[dict, dict]:
    """(weights, run record) of a finished run; the EMA weights where the run kept them."""
    path = Path(out) / "final.pt"
    if not path.exists():
        raise D2itError(f"{out}: no final.pt (is the training finished?)")
    final = load_weights(path, weights_only=False)
    if not isinstance(final, dict) or not {"model", "ema", "run"} <= final.keys():
        raise D2itError(f"{path}: not a final.pt of this harness (no model, ema and run record)")
    return (final["ema"] if ema and final["ema"] is not None else final["model"]), final["run"]
