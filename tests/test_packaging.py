"""The conda environment pins what pyproject pins, every pin is used, and the CI script installs
as the README says."""
import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_mirrors_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if p != "-e ."] == deps
    assert all("==" in d or "<" in d for d in deps), "every dependency pinned or bounded"


def test_ci_runs_the_readme_commands():
    """CI installs and tests as the README says (docs/tested_commands.yaml)."""
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    commands = yaml.safe_load((REPO / "docs" / "tested_commands.yaml").read_text())
    for command in (commands["install"], commands["tests"]):
        assert command in readme and command in ci


# Pinned but not imported by the project: why each is pinned.
NOT_IMPORTED = {"snakemake": "the workflow (`snakemake ...`)",
                "snakemake-executor-plugin-slurm": "the SLURM profile's executor",
                "dvc": "`dvc metrics / plots` on the committed results",
                "torchvision": "torch-fidelity's LPIPS VGG16; pinned with the torch it matches"}


def imported_modules() -> set[str]:
    """Top-level modules imported anywhere in the package, workflow and benchmarks."""
    files = [*REPO.glob("d2it/**/*.py"), *REPO.glob("baselines/**/*.py"),
             *REPO.glob("benchmarks/**/*.py"), *REPO.glob("workflow/**/*.smk"), REPO / "Snakefile"]
    names = set()
    for path in files:  # regex, not ast: Snakefiles are not Python
        names.update(re.findall(r"^\s*(?:from|import) ([A-Za-z_]\w*)", path.read_text(), re.M))
    return names


def test_every_pinned_dependency_is_imported_or_a_named_tool():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    provides = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provides.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    imported = imported_modules()
    unused = [d for d in (re.split(r"[=<>]", dep)[0] for dep in deps)
              if d not in NOT_IMPORTED and not provides.get(d, set()) & imported]
    assert unused == []
