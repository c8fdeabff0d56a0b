#!/usr/bin/env python3
"""tfnas search command (see `python search.py --help`)."""
import sys

from tfnas.runtime import quiet_tensorflow

quiet_tensorflow()

from tfnas.cli.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
