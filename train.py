#!/usr/bin/env python3
"""tfnas train command (see `python train.py --help`)."""
import sys

from tfnas.runtime import quiet_tensorflow

quiet_tensorflow()

from tfnas.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
