"""Screenshots of a study in the MLflow UI, as docs/tracking.md shows them: the evaluations in
the runs list, and DiT against D²iT in the compare view.

    mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5005 &
    python docs/img/mlflow_screens.py --study quick --ui http://127.0.0.1:5005 --out docs/img

Needs Playwright (`pip install playwright`, not a dependency of the project) and a Chromium
(Debian's `chromium`, at /usr/bin/chromium); nothing is downloaded.
"""
import argparse
import json
import urllib.parse
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def evaluations(store: str, study: str) -> tuple[str, dict]:
    """The study's experiment id and its evaluation runs, {run name: run id}."""
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(f"d2it-{study}")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`d2it.role` = 'evaluation'")
    return experiment.experiment_id, {r.info.run_name: r.info.run_id for r in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="quick")
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--ui", default="http://127.0.0.1:5005")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    experiment, runs = evaluations(args.store, args.study)
    dit = next(i for name, i in runs.items() if name.startswith("table2/dit_xl "))
    d2it = next(i for name, i in runs.items() if name.startswith("table2/d2it_xl "))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 560})
        page.goto(f"{args.ui}/#/experiments/{experiment}/runs?viewStateShareKey=d2it")
        page.get_by_text("table2/dit_xl").first.wait_for()
        page.get_by_role("button", name="Close").last.click()  # MLflow 3's assistant panel
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out / f"mlflow-runs-{args.study}.png")
        ids = urllib.parse.quote(json.dumps([dit, d2it]))
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.goto(f"{args.ui}/#/compare-runs?runs={ids}"
                  f"&experiments={urllib.parse.quote(json.dumps([experiment]))}")
        page.get_by_text("fd_lo").first.wait_for()
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out / f"mlflow-compare-{args.study}.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
