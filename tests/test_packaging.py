"""The conda environment pins what pyproject pins, and the CI script installs as the README says."""
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
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    install = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'"
    for command in (install,
                    "pytest -q"):
        assert command in readme and command in ci
