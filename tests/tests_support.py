"""Constants, the tiny study and the bad-input suite's tally, shared by the tests."""
import copy
import os
from pathlib import Path

N_TRAIN, N_HELDOUT = 160, 40
TRAIN = {"steps": 3, "batch_size": 8, "ema": 0.5, "ckpt_every": 3, "log_every": 1}


def tiny_study(root: Path, dataset: Path, **sections) -> dict:
    """A tiny study over the test dataset, its runs and results under `root`: DiT, D²iT and a grain
    model on one DVAE (r = 0.5), a few steps each. `sections` replace top-level keys."""
    study = {
        "name": "tiny",
        "paths": {"runs": str(root / "runs"), "results": str(root / "results")},
        "data": {"manifest": str(dataset), "resolution": 32, "classes": 10},
        "grain": {"region": 4, "thresholds": str(dataset.parent / "thresholds.json")},
        "dvae": {"preset": "tiny", "perceptual": "none",
                 "train": {"steps": 4, "batch_size": 8, "ema": None, "log_every": 2}},
        "train": TRAIN,
        "specs": {"dit": {"kind": "dit", "size": "tiny", "fine_ratio": 0.5},
                  "d2it": {"kind": "d2it", "size": "tiny", "grain_model": "dgt"},
                  "dgt": {"kind": "grain", "depth": 1, "hidden": 32, "heads": 2}},
        "sampling": {"steps": 4, "n": 6, "batch_size": 4, "grain_calibration": 16},
        "tables": {"table2": {"rows": {"dit_xl": {"spec": "dit"}, "d2it_xl": {"spec": "d2it"}}}},
        "recon": {"fine_ratios": [0.5]},
        "metrics": {"extractor": "effnet", "reference_dir": str(root / "reference")},
        "tracking": {"uri": None},
    }
    study.update(copy.deepcopy(sections))
    return study


# What the bad-input suite saw, (test, outcome): an error's outcome is recorded before the test
# asserts on it, a result that held after its checks passed; conftest.py totals them at the end
# of the run (`pytest -m bad_input`) and counts a failed test with no error seen as silent.
SEEN: list[tuple[str, str]] = []
ONE_LINE = "one line `d2it: error: ...`, exit 2"
HELD = "held: the right result, no error"
WARNED = "one warning line, the work goes on"
INTERRUPTED = "one line `d2it: interrupted`, exit 130"


def saw(outcome: str) -> str:
    """Records what the running test saw and returns it, for the test to assert on."""
    SEEN.append((os.environ["PYTEST_CURRENT_TEST"].split(" ")[0], outcome))
    return outcome


def cli_outcome(code: int, err: str) -> str:
    """What a user of the CLI saw, from its exit code and stderr: logs and progress bars may come
    first, but the one error line is the last, and there is no second one."""
    if "Traceback" in err:
        return saw("traceback")
    if code == 130 and err == "d2it: interrupted\n":
        return saw(INTERRUPTED)
    errors = [line for line in err.splitlines() if "error" in line]
    if code == 2 and len(errors) == 1 and errors[0].startswith("d2it: error: "):
        return saw(ONE_LINE if err.strip().endswith(errors[0]) else "error line not last")
    if len(errors) > 1:
        return saw("several error lines")
    return saw(f"exit {code}, {len(errors)} error line(s)")


def error_outcome(error: Exception) -> str:
    """What the CLI shows for an error raised inside a command: `d2it.cli` prints a D2itError as
    `d2it: error: <message>` with exit 2 (test_cli_reports_one_line_error_and_exit_code_2)."""
    from d2it.errors import D2itError

    if not isinstance(error, D2itError):
        return saw(f"traceback ({type(error).__name__})")
    return cli_outcome(2, f"d2it: error: {error}\n")


def left_behind(*paths: Path) -> list[Path]:
    """Those of `paths` that exist after a refused command; recorded either way."""
    found = [p for p in paths if Path(p).exists()]
    saw(f"left behind: {len(found)} path(s)" if found else "nothing left behind")
    return found
