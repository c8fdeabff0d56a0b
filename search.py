#!/usr/bin/env python3
"""tfnas search command (see `python search.py --help`)."""
import sys

from tfnas.runtime import limit_malloc_arenas, quiet_tensorflow

quiet_tensorflow()
limit_malloc_arenas()  # a lower peak RSS (tfnas.runtime); MALLOC_ARENA_MAX overrides

from tfnas.cli.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
