"""Latent caches: a DVAE's latents, grain maps and labels of both splits, stored so that a process
reads the small meta.json to learn everything about them, and reads only the rows it trains on
(each rank of a multi-GPU run its own share).

    <DVAE run>/latents/
        meta.json                      format, scale factor, views, shapes, classes, fine fraction,
                                       the DVAE run (folder and identity digest), each array's
                                       sha256 and the digest of all of it (checked when read)
        <split>_latents.npy            float32  N x V x C x H x W   (V views: identity [, mirror])
        <split>_grain.npy              bool     N x V x H/2 x W/2   (True = fine)
        <split>_labels.npy             int64    N
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from d2it.errors import D2itError
from d2it.config import digest
from d2it.files import read_json, sha256_file, write_json_atomic

FORMAT = "d2it-latents/3"  # 3: meta.json carries the arrays' sha256 and its own digest
SPLITS = ("train", "heldout")
ARRAYS = ("latents", "grain", "labels")


class LatentCache:
    """A finished cache: meta.json read at once, arrays memory-mapped on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "meta.json"
        if not path.is_file():
            raise D2itError(f"{self.folder}: no latent cache (make it with `d2it encode`)")
        self.meta = read_json(path, "latent cache's meta.json", "re-encode with `d2it encode`")
        if self.meta.get("format") != FORMAT:
            raise D2itError(f"{path}: format {self.meta.get('format')!r}, expected {FORMAT!r} "
                            "(re-encode with `d2it encode`)")
        written = {k: v for k, v in self.meta.items() if k != "digest"}
        if self.meta.get("digest") != digest(written):
            raise D2itError(f"{path}: changed since the cache was written (its digest no longer "
                            "matches); re-encode with `d2it encode`")

    @property
    def digest(self) -> str:
        """What the cache holds, in one digest: its meta.json, the arrays' sha256 among it."""
        return self.meta["digest"]

    @property
    def scale_factor(self) -> float:
        return self.meta["scale_factor"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def fine_fraction(self) -> float:
        """Share of fine regions in the training split's grain maps."""
        return self.meta["fine_fraction"]

    @property
    def latent(self) -> dict:
        """{channels, size} of the fine-grid latent."""
        return {"channels": self.meta["channels"], "size": self.meta["size"]}

    def array(self, split: str, what: str) -> np.ndarray:
        """One array of a split, memory-mapped read-only."""
        path = self.folder / f"{split}_{what}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise D2itError(f"{path}: unreadable latent array ({e}); "
                            "re-encode with `d2it encode`") from None

    def dataset(self, split: str = "train") -> "LatentDataset":
        return LatentDataset(self.folder, split)


class RowFile:
    """Rows of one .npy file read with pread: nothing is mapped or read ahead into the process, so
    it holds the rows it asked for and no more, however many epochs it runs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, self.dtype = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise D2itError(f"{self.path}: unreadable latent array ({e}); "
                            "re-encode with `d2it encode`") from None
        if fortran:
            raise D2itError(f"{self.path}: Fortran-ordered array; re-encode with `d2it encode`")
        self.rows = shape[0]
        self.row_shape = shape[1:]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape))
        size = self.path.stat().st_size
        if size < self.offset + self.rows * self.row_bytes:  # cut short by a kill or a full disk
            raise D2itError(f"{self.path}: truncated ({size} of "
                            f"{self.offset + self.rows * self.row_bytes} bytes); "
                            "re-encode with `d2it encode`")
        self.fd, self.pid = None, None

    def read(self, rows) -> np.ndarray:
        if self.pid != os.getpid():  # a forked DataLoader worker opens its own descriptor
            self.fd, self.pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = b"".join(os.pread(self.fd, self.row_bytes, self.offset + int(r) * self.row_bytes)
                        for r in rows)
        return np.frombuffer(data, self.dtype).reshape(len(rows), *self.row_shape)

    def __getstate__(self):
        return {**self.__dict__, "fd": None, "pid": None}


class LatentDataset(torch.utils.data.Dataset):
    """Rows (latents V x C x H x W, grain V x h x w, label) of one split, read from the files only
    when asked for: each process (and DataLoader worker) holds just the rows it trains on."""

    def __init__(self, folder: Path, split: str):
        self.folder, self.split = Path(folder), split
        self.length = LatentCache(folder).meta["counts"][split]
        self.files = [RowFile(self.folder / f"{split}_{what}.npy") for what in ARRAYS]
        for file in self.files:
            if file.rows != self.length:
                raise D2itError(f"{file.path}: {file.rows} rows, meta.json says {self.length}; "
                                "re-encode with `d2it encode`")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        latents, grain, labels = (torch.from_numpy(f.read(indices).copy()) for f in self.files)
        return [(latents[j], grain[j], labels[j]) for j in range(len(indices))]


class CacheWriter:
    """Writes a cache batch by batch into <folder>.tmp and moves it into place when finished, so a
    reader never sees a half-written cache and a failed encode leaves the old one as it was."""

    def __init__(self, folder: Path, counts: dict[str, int], views: int, channels: int, size: int):
        self.folder = Path(folder)
        self.tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        shapes = {"latents": (views, channels, size, size), "grain": (views, size // 2, size // 2),
                  "labels": ()}
        dtypes = {"latents": np.float32, "grain": np.bool_, "labels": np.int64}
        self.arrays = {(split, what): np.lib.format.open_memmap(
                           self.tmp / f"{split}_{what}.npy", mode="w+", dtype=dtypes[what],
                           shape=(counts[split], *shapes[what]))
                       for split in counts for what in ARRAYS}
        self.counts, self.filled = counts, {split: 0 for split in counts}
        self.moments = np.zeros(3)  # count, sum, sum of squares of the training latents (float64)
        self.fine = np.zeros(2)  # fine regions, regions of the training grain maps

    def add(self, split: str, latents: torch.Tensor, grain: torch.Tensor,
            labels: torch.Tensor) -> None:
        """Append a batch: latents B x V x C x H x W, grain B x V x h x w, labels B."""
        start = self.filled[split]
        stop = start + len(latents)
        for what, values in zip(ARRAYS, (latents, grain, labels)):
            self.arrays[split, what][start:stop] = values.cpu().numpy()
        self.filled[split] = stop
        if split == "train":
            x = latents.double()
            self.moments += [x.numel(), x.sum().item(), x.square().sum().item()]
            self.fine += [grain.sum().item(), grain.numel()]

    def finish(self, meta: dict) -> dict:
        """Flush, write meta.json (scale factor = 1 / std of the training latents) and swap in."""
        for split, count in self.counts.items():
            if self.filled[split] != count:
                raise D2itError(f"{self.tmp}: {split} holds {self.filled[split]} of {count} rows")
        for array in self.arrays.values():
            array.flush()
        n, total, squares = self.moments
        std = float(np.sqrt(max(squares / n - (total / n) ** 2, 0.0) * n / max(n - 1, 1)))
        if not np.isfinite(1 / std if std else np.inf):
            raise D2itError(f"{self.folder}: latents have zero spread; the DVAE is degenerate")
        first = self.arrays["train", "latents"]
        meta = {"format": FORMAT, **meta, "scale_factor": 1.0 / std, "counts": self.counts,
                "views": int(first.shape[1]), "channels": int(first.shape[2]),
                "size": int(first.shape[3]), "fine_fraction": float(self.fine[0] / self.fine[1])}
        self.arrays.clear()
        meta["arrays_sha256"] = {p.name: sha256_file(p) for p in sorted(self.tmp.glob("*.npy"))}
        meta["digest"] = digest(meta)
        write_json_atomic(self.tmp / "meta.json", meta)
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        self.tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        return meta
