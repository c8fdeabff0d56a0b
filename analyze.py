#!/usr/bin/env python3
"""tfnas analyze command (see `python analyze.py --help`)."""
import sys

from tfnas.runtime import quiet_tensorflow

quiet_tensorflow()

from tfnas.cli.analyze import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
