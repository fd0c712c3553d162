"""A finished study's results, copied to a versioned folder (`d2it report publish`).

Snakemake's outputs (results/<study>/) are not in git: a fresh clone has none, so Snakemake makes
them all, and once made finds nothing to do. What a study found is published by copying its
tables, figures, metric JSON and verdict to results/published/<study>/ (in git; DVC's metrics and
plots read it), with PUBLISHED.json listing each file's sha256 and the commit it was published
from. The copy is made beside the old one and swapped in, so a failed publish leaves the old one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from d2it.errors import D2itError
from d2it.files import sha256_file, write_json_atomic
from d2it.tracking import git_commit

MANIFEST = "PUBLISHED.json"
# Written beside the targets by their jobs (or by `d2it bench`, benchmarks/learnability.py).
BESIDE = ("*.csv", "*.png", "*.md", "*.json", "metrics/**/*.json", "rows/**/*.json",
          "samples/*.png", "learnability/**/*")
# Made by commands outside the workflow: a fresh clone's run has none, so the last published
# copy is kept unless this results folder holds a newer one.
OUTSIDE_WORKFLOW = ("bench.json", "bench.md", "learnability/**/*")
NOT_PUBLISHED = ("published.json",)  # the record of the last publish, under results/<study>/


def published_files(plan) -> list[Path]:
    """The files of a study's results folder that are published: every target (refused if one is
    missing: the study is not finished) and the files written beside them."""
    missing = [str(p) for p in plan.targets() if not p.is_file()]
    if missing:
        raise D2itError(f"study {plan.name!r} is not finished: {missing[0]} is missing "
                        f"({len(missing)} of {len(plan.targets())} targets); run its workflow "
                        "first")
    found = {p for pattern in BESIDE for p in plan.results_dir.glob(pattern)
             if p.is_file() and p.name not in NOT_PUBLISHED}
    return sorted(found)


def publish(plan, to: Path) -> dict:
    """Copy the study's results to `to`/<study>/ (replacing what was published before) and
    return its manifest."""
    source = plan.results_dir
    target = Path(to) / plan.name
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise D2itError(f"{target}: the published copy cannot be inside the results it copies")
    files = {p.relative_to(source).as_posix(): p for p in published_files(plan)}
    for pattern in OUTSIDE_WORKFLOW:
        for kept in filter(Path.is_file, target.glob(pattern)):
            files.setdefault(kept.relative_to(target).as_posix(), kept)
    staging = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    for name, path in files.items():
        copy = staging / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    manifest = {"study": plan.name, "mark": plan.study["mark"], "source": str(source),
                "git_commit": git_commit(),
                "files": {name: sha256_file(path) for name, path in sorted(files.items())}}
    write_json_atomic(staging / MANIFEST, manifest)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return {"published": str(target), "files": len(files), "git_commit": manifest["git_commit"]}
