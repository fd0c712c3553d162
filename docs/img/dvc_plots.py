"""`dvc plots show` as pictures, offline: DVC's HTML loads Vega from a CDN, so this renders the
Vega-Lite specs of `dvc plots show --json` with vl-convert (`pip install vl-convert-python`, not
a dependency of the project), one PNG per plot.

    dvc plots show --json > plots.json
    python docs/img/dvc_plots.py plots.json --out docs/img
"""
import argparse
import json
import re
from pathlib import Path

import vl_convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plots", type=Path, help="the output of `dvc plots show --json`")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    for name, views in json.loads(args.plots.read_text())["data"].items():
        for view in views:
            png = args.out / f"dvc-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.png"
            png.write_bytes(vl_convert.vegalite_to_png(view["content"], scale=1.5))
            print(png)


if __name__ == "__main__":
    main()
