"""Files every part of tfnas writes: one JSON encoder, one atomic writer.

- :func:`json_default` turns NumPy scalars and arrays, tuples, sets and
  objects with ``to_dict()`` into JSON (the one ``default=`` of tfnas);
  :func:`to_json` is ``json.dumps`` with it.
- :func:`atomic_write` writes a file so that readers see the old or the new
  content, never half of it: into a temporary file beside it, fsynced, then
  renamed over it (atomic on POSIX), and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

__all__ = ["json_default", "to_json", "fsync_dir", "atomic_write", "atomic_write_text",
           "atomic_write_json"]


def json_default(obj):
    """``default=`` for :func:`json.dumps`."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def to_json(obj, **kwargs) -> str:
    return json.dumps(obj, default=json_default, **kwargs)


def fsync_dir(path: str) -> None:
    """fsync a directory (the rename of a file in it becomes durable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """``with atomic_write(path) as fh: ...``: the file appears whole at the
    end of the block, or not at all if the block raises."""
    tmp = f"{path}.tmp-{os.getpid()}"
    kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(text)


def atomic_write_json(path: str, obj, indent: int | None = 2, **kwargs) -> None:
    """Write ``obj`` as JSON (with :func:`json_default`) atomically."""
    atomic_write_text(path, to_json(obj, indent=indent, **kwargs) + "\n")
