"""Dataset manifests: the file list of a dataset with label, split and sha256 of every file."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from d2it.errors import D2itError
from d2it.files import read_json, write_json_atomic

FORMAT = "d2it-manifest/1"


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the manifest's root
    label: int
    split: str
    sha256: str


@dataclass
class Manifest:
    root: str  # relative paths are relative to the manifest file's folder
    classes: list[str]
    files: list[ManifestEntry]
    generator: dict | None = None  # parameters of the embedded generator, None for a user's folder
    location: Path | None = field(default=None, compare=False)  # where it was loaded from

    def save(self, path: Path) -> None:
        obj = {"format": FORMAT, "root": self.root, "classes": self.classes,
               "generator": self.generator, "files": [asdict(e) for e in self.files]}
        write_json_atomic(path, obj)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        path = Path(path)
        obj = read_json(path, "manifest", "make one with `d2it data synth` or `d2it data prepare`")
        if obj.get("format") != FORMAT:
            raise D2itError(f"{path}: format {obj.get('format')!r}, expected {FORMAT!r}")
        files = [ManifestEntry(**e) for e in obj["files"]]
        return cls(obj["root"], obj["classes"], files, obj.get("generator"), location=path)

    @property
    def root_dir(self) -> Path:
        root, base = Path(self.root), self.location.parent if self.location else Path(".")
        return root if root.is_absolute() else (base / root).resolve()

    def split(self, name: str) -> list[ManifestEntry]:
        entries = [e for e in self.files if e.split == name]
        if not entries:
            raise D2itError(f"{self.location}: no files in split {name!r}")
        return entries

    def digest(self) -> str:
        """Identifies the dataset's content (for caches keyed by dataset)."""
        return hashlib.sha256("".join(f"{e.path}:{e.label}:{e.split}:{e.sha256}\n"
                                      for e in self.files).encode()).hexdigest()
