"""``analyze.py topology`` and ``analyze.py variants``.

Neither command imports TensorFlow (``topology --params`` counts the
evaluation network's parameters from its plan), so both answer in well
under a second.
"""

from __future__ import annotations

import json
import os
import re

from tfnas import topology
from tfnas.cli.common import UsageError, parse_seed_range, print_json
from tfnas.genotypes import Genotype, zoo_names
from tfnas.plan import parameter_counts
from tfnas.resolve import resolve_genotype

PLOT_FORMATS = ("png", "svg", "pdf")


def register(subparsers) -> None:
    _register_topology(subparsers)
    _register_variants(subparsers)


# -- shared ------------------------------------------------------------------

def _genotype_arg(parser, note: str, **kwargs) -> None:
    parser.add_argument(
        "--genotype", metavar="G", **kwargs,
        help="a zoo name (" + ", ".join(zoo_names(True)) + "), a variant name "
             "(DARTS_CONN3, ENAS_OPS7, NASNet_WIDEST, DARTS_DEEPEST), a path to a JSON or "
             "Genotype(...) repr file, or a JSON / repr string " + note)


def _resolve_named(spec: str, position: int) -> Genotype:
    genotype = resolve_genotype(spec)
    if genotype.name:
        return genotype
    return genotype.with_name(f"genotype{position}")


def _file_stem(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "genotype"


def _plot_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create plot directory {path}: {err.strerror}") from None
    return path


def _diagram_call(function, *args, **kwargs):
    """Run a diagram function, reporting unwritable files as bad input."""
    from tfnas.diagrams import DiagramError
    try:
        return function(*args, **kwargs)
    except DiagramError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot write {err.filename or 'plot'}: {err.strerror}") from None


def _width(value: float) -> str:
    return f"{value:g}c"


def _print_table(rows: list, columns: list) -> None:
    """``columns``: (header, key, formatter) triples."""
    cells = [[fmt(row[key]) if row.get(key) is not None else "-" for _, key, fmt in columns]
             for row in rows]
    headers = [h for h, _, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


_SUMMARY_COLUMNS = [
    ("name", "name", str),
    ("normal width", "normal_width", _width),
    ("normal depth", "normal_depth", str),
    ("reduce width", "reduce_width", _width),
    ("reduce depth", "reduce_depth", str),
]


# -- topology ----------------------------------------------------------------

def _register_topology(subparsers) -> None:
    p = subparsers.add_parser(
        "topology", help="width and depth of genotypes (default: every zoo genotype)",
        description="Print the width (in units of c, the channels of one intermediate node) "
                    "and depth (edges on the longest input-to-output path) of the normal and "
                    "reduction cells of genotypes. Without --genotype: every published "
                    "genotype in the zoo.")
    _genotype_arg(p, "(repeatable; default: every zoo genotype)", action="append")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of objects with keys name, normal_width, "
                        "normal_depth, reduce_width, reduce_depth (plus the keys of "
                        "--nodes / --params)")
    p.add_argument("--nodes", action="store_true",
                   help="add the per-node breakdown (inputs, width contribution, depth, in "
                        "concat) of both cells")
    p.add_argument("--plot", metavar="DIR",
                   help="write each genotype's cell diagrams (<name>.<format>) and the "
                        "paper's Figure 1 of the five published normal cells "
                        "(figure1.<format>) into DIR")
    p.add_argument("--format", choices=PLOT_FORMATS, default="png",
                   help="file format of --plot diagrams (default: %(default)s)")
    p.add_argument("--params", action="store_true",
                   help="add params / params_auxiliary: trainable parameters of the evaluation "
                        "network (NetworkCIFAR, --init-channels, --layers, --num-classes) "
                        "without / of the auxiliary head")
    p.add_argument("--init-channels", type=int, default=36, metavar="C",
                   help="initial channels for --params (default: %(default)s)")
    p.add_argument("--layers", type=int, default=20,
                   help="cells in the network for --params (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=10,
                   help="classes for --params (default: %(default)s)")
    p.set_defaults(func=run_topology)


def parameter_columns(genotype: Genotype, init_channels: int = 36, layers: int = 20,
                      num_classes: int = 10) -> dict:
    """``{"params", "params_auxiliary"}`` of the evaluation network, counted
    from its plan (no TensorFlow)."""
    return parameter_counts(genotype, init_channels=init_channels, layers=layers,
                            num_classes=num_classes)


def topology_row(genotype: Genotype, nodes: bool = False, params: dict | None = None) -> dict:
    """One row of ``analyze.py topology``: the :func:`topology.summarize`
    keys, plus ``normal_nodes``/``reduce_nodes`` with ``nodes`` and the
    parameter counts given in ``params`` (see :func:`parameter_columns`)."""
    extra = {}
    if nodes:
        for kind in ("normal", "reduce"):
            extra[f"{kind}_nodes"] = topology.node_breakdown(genotype.cell(kind))
    if params:
        extra.update(params)
    return topology.summary_row(genotype, extra=extra)


def run_topology(args) -> int:
    for name in ("init_channels", "layers", "num_classes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    specs = args.genotype or zoo_names()
    genotypes = [_resolve_named(spec, i + 1) for i, spec in enumerate(specs)]
    rows = []
    for genotype in genotypes:
        params = (parameter_columns(genotype, args.init_channels, args.layers, args.num_classes)
                  if args.params else None)
        rows.append(topology_row(genotype, nodes=args.nodes, params=params))

    if args.plot:
        _write_topology_plots(genotypes, _plot_dir(args.plot), args.format)

    if args.json:
        print_json(rows)
        return 0
    columns = list(_SUMMARY_COLUMNS)
    if args.params:
        columns += [("params", "params", "{:,}".format),
                    ("aux head", "params_auxiliary", "{:,}".format)]
    _print_table(rows, columns)
    if args.nodes:
        for row in rows:
            for kind in ("normal", "reduce"):
                print(f"\n{row['name']} {kind} cell")
                _print_table(row[f"{kind}_nodes"], [
                    ("node", "node", str),
                    ("inputs", "edges", lambda es: ", ".join(f"{op}({i})" for op, i in es)),
                    ("width", "width", _width), ("depth", "depth", str),
                    ("concat", "in_concat", lambda b: "yes" if b else "no")])
    if args.plot:
        print(f"\ndiagrams written to {args.plot}")
    return 0


def _write_topology_plots(genotypes, directory: str, fmt: str) -> None:
    from tfnas import diagrams
    for genotype in genotypes:
        path = os.path.join(directory, f"{_file_stem(genotype.name)}.{fmt}")
        _diagram_call(diagrams.draw_genotype, genotype, path)
    _diagram_call(diagrams.figure1, os.path.join(directory, f"figure1.{fmt}"))


# -- variants ----------------------------------------------------------------

def _register_variants(subparsers) -> None:
    from tfnas.variants import DARTS_STUDY_BANDS
    p = subparsers.add_parser(
        "variants", help="connection / operation variants, stratified sets, rewirings",
        description="Generate topology variants of a genotype. conn: the authors' "
                    "<ARCH>_CONN<k> (operations kept, inputs re-drawn); ops: <ARCH>_OPS<k> "
                    "(wiring kept, operations re-drawn); widest / deepest: every node fed by "
                    "both cell inputs / a chain, operations kept. --stratified draws "
                    "--per-band connection variants per normal-cell width band, ordered so "
                    "width rises and depth falls (C1, C2, ...). Variants must be trained "
                    "from scratch with train.py to compare them.")
    _genotype_arg(p, "(default: %(default)s)", default="DARTS")
    p.add_argument("--kind", choices=("conn", "ops", "widest", "deepest"), default="conn",
                   help="variant kind (default: %(default)s)")
    p.add_argument("--seeds", default="1-10", metavar="LIST",
                   help="seeds k of <ARCH>_CONN<k> / <ARCH>_OPS<k>, e.g. 1-10 or 1,3,5 "
                        "(default: %(default)s)")
    p.add_argument("--stratified", action="store_true",
                   help="draw a stratified set of connection variants instead of --seeds")
    p.add_argument("--per-band", type=int, default=3, metavar="K",
                   help="--stratified: variants per width band (default: %(default)s)")
    p.add_argument("--bands", default=",".join(f"{b:g}" for b in DARTS_STUDY_BANDS),
                   metavar="W,W,...",
                   help="--stratified: widths (units of c) of the bands (default: %(default)s, "
                        "the paper's DARTS study)")
    p.add_argument("--seed", type=int, default=0,
                   help="--stratified: seed of the draw order (default: %(default)s)")
    p.add_argument("--cell", choices=("normal", "reduce"), default="normal",
                   help="--stratified: the cell whose width defines the bands "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list: name, label (C1, ... with --stratified), kind, "
                        "genotype (dict), normal/reduce width and depth")
    p.add_argument("--save", metavar="DIR",
                   help="also write each variant as DIR/<name>.json (usable as train.py "
                        "--genotype DIR/<name>.json)")
    p.add_argument("--plot", metavar="DIR",
                   help="write a grid of the variants' normal cells as DIR/variants.<format>")
    p.add_argument("--format", choices=PLOT_FORMATS, default="png",
                   help="file format of --plot (default: %(default)s)")
    p.set_defaults(func=run_variants)


def _parse_bands(text: str) -> list:
    try:
        bands = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"bad --bands {text!r}; use e.g. 2,2.5,3,3.5") from None
    if not bands:
        raise UsageError(f"bad --bands {text!r}; use e.g. 2,2.5,3,3.5")
    return bands


def variant_rows(genotype: Genotype, kind: str = "conn", seeds=(), stratified: bool = False,
                 per_band: int = 3, bands=None, seed: int = 0, cell: str = "normal") -> list:
    """The rows ``analyze.py variants`` prints: ``name``, ``label``,
    ``kind``, ``genotype`` (dict) and the :func:`topology.summarize` numbers."""
    from tfnas import variants

    if stratified:
        chosen = variants.stratified_variants(
            genotype, per_band=per_band, seed=seed, cell=cell,
            bands=variants.DARTS_STUDY_BANDS if bands is None else bands)
        labelled = [(f"C{i + 1}", "conn", g) for i, g in enumerate(chosen)]
    elif kind in ("widest", "deepest"):
        rewire = variants.widest_rewiring if kind == "widest" else variants.deepest_rewiring
        labelled = [(None, kind, rewire(genotype))]
    else:
        labelled = [(None, kind, variants.make_variant(genotype, kind, s)) for s in seeds]
    rows = []
    for label, kind_, g in labelled:
        row = {"name": g.name, "label": label, "kind": kind_}
        row.update({k: v for k, v in topology.summarize(g).items() if k != "name"})
        row["genotype"] = g.to_dict()
        rows.append(row)
    return rows


def run_variants(args) -> int:
    if args.per_band < 1:
        raise UsageError("--per-band must be at least 1")
    genotype = _resolve_named(args.genotype, 1)
    if args.stratified:
        if args.kind != "conn":
            raise UsageError("--stratified draws connection variants; drop --kind or use conn")
        rows = variant_rows(genotype, stratified=True, per_band=args.per_band,
                            bands=_parse_bands(args.bands), seed=args.seed, cell=args.cell)
    else:
        seeds = parse_seed_range(args.seeds) if args.kind in ("conn", "ops") else ()
        rows = variant_rows(genotype, kind=args.kind, seeds=seeds)

    if args.save:
        directory = _plot_dir(args.save)
        for row in rows:
            path = os.path.join(directory, f"{_file_stem(row['name'])}.json")
            try:
                with open(path, "w", encoding="utf-8") as fh:
                    json.dump({"name": row["name"], **row["genotype"]}, fh, indent=2)
            except OSError as err:
                raise UsageError(f"cannot write {path}: {err.strerror}") from None
    if args.plot:
        from tfnas import diagrams
        cells = [(Genotype.from_dict(r["genotype"]).cell("normal"),
                  f"{r['label']}: {r['name']}" if r["label"] else r["name"]) for r in rows]
        path = os.path.join(_plot_dir(args.plot), f"variants.{args.format}")
        _diagram_call(diagrams.draw_cells, cells, path, ncols=min(4, len(cells)))

    if args.json:
        print_json(rows)
        return 0
    columns = ([("label", "label", str)] if args.stratified else []) + _SUMMARY_COLUMNS
    _print_table(rows, columns)
    if args.stratified:
        print("\nOrdered by normal-cell width (rising), then depth (falling). "
              "Each name regenerates its variant: --genotype <name>.")
    if args.save:
        print(f"genotype files written to {args.save}")
    if args.plot:
        print(f"diagram written to {os.path.join(args.plot, f'variants.{args.format}')}")
    return 0
