"""``analyze.py``: topology, variants and loss-landscape probes.

Each sub-command lives in its own module and registers itself through a
``register(subparsers)`` function that sets ``func`` on its parser.
"""

from __future__ import annotations

import importlib

from tfnas.cli.common import ArgumentParser, run_cli

# (module, description) of every sub-command module; a module may register
# several sub-commands.
SUBCOMMAND_MODULES = (
    "tfnas.cli.analyze_topology",   # topology, variants
    "tfnas.cli.analyze_probes",     # hessian, gradvar, landscape
    "tfnas.cli.analyze_drift",      # drift
    "tfnas.cli.analyze_study",      # study
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="analyze.py",
        description="Measure cell topology, draw variants, and probe trained networks "
                    "(Hessian spectrum, gradient variance, loss landscapes).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def _main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    return run_cli(_main, argv)
