"""``analyze.py drift``: does a search drift to wide, shallow cells, and how fast?

Plots the width and depth of the cells one or more search runs
(``search.py``: DARTS, ENAS, random) derived at every epoch, with the
architectures ENAS and random search sampled (mean ± sd) and the published
cells marked; PNG and SVG, and the per-epoch numbers with ``--json``.
"""

from __future__ import annotations

import os

from tfnas.cli.common import UsageError, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "drift", help="width and depth of the cells searches derive and sample, per epoch",
        description="Plot the topology drift of search runs: the derived cell's width and depth "
                    "per epoch (and the sampled architectures' mean and spread for ENAS and "
                    "random search), with the published cells' values marked.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="search run directories (search.py --out)")
    p.add_argument("--out", default="drift", help="output directory (default: drift)")
    p.add_argument("--cell", choices=("normal", "reduce"), default="normal",
                   help="which cell to follow (default: normal)")
    p.add_argument("--json", action="store_true", help="print the per-epoch numbers as JSON")
    p.set_defaults(func=run_drift)


def _table(run) -> list:
    keep = ("epoch", "normal_width", "normal_depth", "reduce_width", "reduce_depth")
    return [{k: v for k, v in r.items() if k in keep or k.startswith("sampled_")} for r in run["records"]]


def run_drift(args) -> int:
    from tfnas import plots
    for run in args.runs:
        if not os.path.isfile(os.path.join(run, "config.json")):
            raise UsageError(f"{run} is not a search run directory (no config.json)")
    try:
        runs = [plots.read_search_run(r) for r in args.runs]
        os.makedirs(args.out, exist_ok=True)
        files = []
        for fmt in ("png", "svg"):
            path = os.path.join(args.out, f"drift_{args.cell}.{fmt}")
            plots.plot_topology_drift(args.runs, path=path, cell=args.cell)
            files.append(path)
    except (plots.PlotError, ValueError) as err:
        raise UsageError(str(err)) from None
    result = {"figures": files, "runs": [{"run": r["name"], "method": r["method"], "epochs": _table(r)}
                                         for r in runs]}
    if args.json:
        print_json(result)
    else:
        for r in runs:
            last = r["records"][-1] if r["records"] else {}
            print(f"{r['name']} ({r['method']}): {len(r['records'])} epochs; last derived {args.cell} cell "
                  f"width {last.get(f'{args.cell}_width', float('nan')):g}c depth "
                  f"{last.get(f'{args.cell}_depth', 'n/a')}")
        print(f"wrote {', '.join(files)}")
    return 0
