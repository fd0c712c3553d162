"""Files written so that a reader never sees half of one, JSON read with one clear error, and
file digests."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from d2it.errors import D2itError


@contextmanager
def atomic(path: str | Path, fsync: bool = False):
    """A temporary path beside `path` (same suffix, for writers that go by it) to write to; it
    replaces `path` when the block ends, and is removed if the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(*paths: str | Path) -> None:
    """Refuse, before any work, a file or folder that cannot be written: its nearest existing
    folder is read-only (or the path runs through a file), or it exists and is read-only."""
    for path in map(Path, paths):
        found = path
        while not found.exists() and found != found.parent:
            found = found.parent
        if found != path and not found.is_dir():
            raise D2itError(f"{path}: cannot be made: {found} is a file, not a folder")
        if not os.access(found, os.W_OK):
            what = "folder" if found.is_dir() else "file"
            raise D2itError(f"{path}: cannot be written: the {what} {found} is read-only")


def save_torch_atomic(path: str | Path, obj, fsync: bool = False) -> None:
    """torch.save of `obj` to `path`, atomically. Saved through a file object, its records are
    named `archive/...` whatever the file's name (torch names them after a path's stem, here the
    temporary one's), so equal objects give byte-identical files."""
    import torch

    with atomic(path, fsync) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str, hint: str = ""):
    """The JSON object (a dict) in `path`; a missing, cut-short or other file is one D2itError
    naming it as `what` (e.g. "grain thresholds file"), with `hint` saying how to make one."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise D2itError(f"{path}: {what} not found{suffix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise D2itError(f"{path}: not a {what} ({e}){suffix}") from None
    if not isinstance(obj, dict):
        raise D2itError(f"{path}: not a {what} (a JSON {type(obj).__name__}, not an object)"
                        f"{suffix}")
    return obj


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
