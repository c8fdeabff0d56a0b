"""Run directories: configuration, metrics, TensorBoard logs and atomic checkpoints.

Layout of a run directory::

    config.json        everything needed to re-run (written by the caller)
    metrics.jsonl      one JSON object per line (e.g. one per epoch)
    tb/                TensorBoard event files (tb/<name>/ per writer)
    checkpoints/
        latest         name of the newest complete checkpoint
        ckpt-000012/   one complete checkpoint: ckpt.index, ckpt.data-*, state.json

Public API
----------
``RunDir(path, create=True)``
    ``.write_config(dict)`` / ``.read_config()``;
    ``.append_metrics(dict)`` (fsynced JSON line) / ``.read_metrics()`` /
    ``.rewind_metrics(key, last)`` (drop records past a checkpoint on resume);
    ``.tensorboard_writer(name="")`` (a cached ``tf.summary`` file writer);
    ``.save_checkpoint(trackables, state, step, keep=2, keep_steps=())`` -> path;
    ``.checkpoint_path(step)``;
    ``.restore_checkpoint(trackables, expect=None)`` -> state dict or ``None``
    when there is no checkpoint; ``.has_checkpoint()``; ``.latest_checkpoint()``.

``trackables`` is any dict ``name -> trackable`` accepted by
``tf.train.Checkpoint`` (Keras models, optimizers, ``tf.Variable``,
``tf.random.Generator``, ``tf.Module``...).  ``state`` is a JSON-serialisable
dict (epoch, step, anything); :func:`capture_python_rng` /
:func:`restore_python_rng` put NumPy's and Python's global RNG states in it.
``expect`` (a dict) is compared with ``state["meta"]`` written at save time
(e.g. the genotype and network shape), so a checkpoint of another model is
refused with a clear message before any variable is touched.

Atomicity: a checkpoint is written to ``checkpoints/.tmp-*``, every file is
fsynced, the directory is renamed to ``ckpt-<step>`` (atomic on POSIX), then
the ``latest`` pointer is replaced atomically.  Older checkpoints are deleted
only after that, keeping the newest ``keep`` (default 2), so a crash at any
moment leaves the last good checkpoint.  A damaged newest checkpoint is
reported as :class:`CheckpointError`, never silently skipped.

``CheckpointError(ValueError)``: a corrupt, unreadable or mismatched
checkpoint; its message is one line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time

import numpy as np

from tfnas.files import atomic_write_text, fsync_dir, json_default

__all__ = ["RunDir", "CheckpointError", "capture_python_rng", "restore_python_rng",
           "atomic_write_text"]

_STATE_FILE = "state.json"
_PREFIX = "ckpt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (corrupt, incomplete or mismatched)."""


def capture_python_rng() -> dict:
    """NumPy's and Python's global RNG states, JSON-serialisable."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": _to_lists(random.getstate())}


def restore_python_rng(state: dict) -> None:
    if not state:
        return
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in state:
        random.setstate(_to_tuples(state["python"]))


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class RunDir:
    """A run directory (see the module docstring)."""

    def __init__(self, path: str, create: bool = True):
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        if create:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
        elif not os.path.isdir(self.path):
            raise FileNotFoundError(f"run directory {self.path} does not exist")
        self._writers = {}

    # -- paths ----------------------------------------------------------------
    @property
    def config_path(self) -> str:
        return os.path.join(self.path, "config.json")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, "metrics.jsonl")

    @property
    def tb_dir(self) -> str:
        return os.path.join(self.path, "tb")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.path, "checkpoints")

    def __repr__(self):
        return f"RunDir({self.path!r})"

    # -- config and metrics ---------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_path,
                          json.dumps(config, indent=2, sort_keys=True, default=json_default) + "\n")

    def read_config(self) -> dict:
        try:
            with open(self.config_path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.config_path} not found (not a run directory?)") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.config_path} is not valid JSON: {err}") from None

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line and fsync it (it survives a crash right after)."""
        line = json.dumps(record, default=json_default, allow_nan=True)
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list:
        """All complete records; a torn last line (crash mid-write) is ignored."""
        if not os.path.isfile(self.metrics_path):
            return []
        records = []
        with open(self.metrics_path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def rewind_metrics(self, key: str, last) -> None:
        """Keep only records with ``record[key] <= last`` (records without
        ``key`` are kept): used on resume to drop what came after the
        checkpoint being resumed."""
        records = [r for r in self.read_metrics() if key not in r or r[key] <= last]
        atomic_write_text(self.metrics_path,
                          "".join(json.dumps(r, default=json_default) + "\n" for r in records))

    # -- TensorBoard ------------------------------------------------------------
    def tensorboard_writer(self, name: str = ""):
        """A ``tf.summary`` file writer under ``tb/<name>`` (cached per name)."""
        if name not in self._writers:
            import tensorflow as tf
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.tb_dir, name))
        return self._writers[name]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.flush()
            writer.close()
        self._writers = {}

    # -- checkpoints ----------------------------------------------------------------
    def _complete_checkpoints(self) -> list:
        """Names of complete checkpoint directories, oldest first."""
        if not os.path.isdir(self.checkpoint_dir):
            return []
        names = [n for n in os.listdir(self.checkpoint_dir)
                 if n.startswith(_PREFIX + "-")
                 and os.path.isfile(os.path.join(self.checkpoint_dir, n, _STATE_FILE))]
        return sorted(names)

    def latest_checkpoint(self) -> str | None:
        """Path of the newest complete checkpoint directory, or ``None``."""
        pointer = os.path.join(self.checkpoint_dir, "latest")
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as fh:
                name = fh.read().strip()
            path = os.path.join(self.checkpoint_dir, name)
            if name and os.path.isdir(path):
                return path
            raise CheckpointError(f"{pointer} names checkpoint {name!r}, which does not exist")
        names = self._complete_checkpoints()
        return os.path.join(self.checkpoint_dir, names[-1]) if names else None

    def checkpoint_path(self, step: int) -> str:
        """Where the checkpoint of ``step`` is (or would be)."""
        return os.path.join(self.checkpoint_dir, f"{_PREFIX}-{int(step):06d}")

    def has_checkpoint(self) -> bool:
        try:
            return self.latest_checkpoint() is not None
        except CheckpointError:
            return True

    def save_checkpoint(self, trackables: dict, state: dict, step: int, keep: int = 2,
                        keep_steps=()) -> str:
        """Write an atomic checkpoint of ``trackables`` plus the JSON ``state``;
        returns its directory.  ``step`` (e.g. the epoch) names it.  The
        newest ``keep`` checkpoints survive, and those of ``keep_steps``
        (e.g. the early epochs a study probes) are never deleted."""
        import tensorflow as tf

        os.makedirs(self.checkpoint_dir, exist_ok=True)
        name = f"{_PREFIX}-{int(step):06d}"
        final = os.path.join(self.checkpoint_dir, name)
        tmp = os.path.join(self.checkpoint_dir, f".tmp-{name}-{os.getpid()}-{time.time_ns()}")
        os.makedirs(tmp)
        try:
            objects, manifest = _checkpointable(trackables)
            tf.train.Checkpoint(**objects).write(os.path.join(tmp, _PREFIX))
            state = dict(state, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                         trackables=sorted(trackables), variables=manifest)
            with open(os.path.join(tmp, _STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=2, default=json_default)
            for entry in os.listdir(tmp):
                with open(os.path.join(tmp, entry), "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            if os.path.exists(final):   # re-saving the same step: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.checkpoint_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(os.path.join(self.checkpoint_dir, "latest"), name + "\n")
        kept = {f"{_PREFIX}-{int(s):06d}" for s in keep_steps}
        for old in self._complete_checkpoints()[:-keep] if keep > 0 else []:
            if old != name and old not in kept:
                shutil.rmtree(os.path.join(self.checkpoint_dir, old), ignore_errors=True)
        for entry in os.listdir(self.checkpoint_dir):  # leftovers of crashed saves
            if entry.startswith(".tmp-") and not entry.endswith(f"-{os.getpid()}") \
                    and f"-{os.getpid()}-" not in entry:
                shutil.rmtree(os.path.join(self.checkpoint_dir, entry), ignore_errors=True)
        return final

    def read_checkpoint_state(self, path: str | None = None) -> dict:
        """The JSON state of checkpoint ``path`` (default: the latest)."""
        path = path or self.latest_checkpoint()
        if path is None:
            raise CheckpointError(f"no checkpoint in {self.checkpoint_dir}")
        state_path = os.path.join(path, _STATE_FILE)
        try:
            with open(state_path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} is incomplete (no {_STATE_FILE})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"checkpoint {path} is corrupt ({_STATE_FILE}: {err})") from None

    def restore_checkpoint(self, trackables: dict, expect: dict | None = None,
                           path: str | None = None, partial: bool = False) -> dict | None:
        """Restore ``trackables`` from the latest (or given) checkpoint and
        return its state; ``None`` when the run has no checkpoint.

        Raises :class:`CheckpointError` when the checkpoint is corrupt or
        does not match: ``expect`` differs from the saved ``state["meta"]``,
        a saved object is missing from ``trackables`` (unless ``partial``:
        then only the given objects are restored, e.g. the model without its
        optimizer) or has other variables, or a variable has another shape."""
        import tensorflow as tf

        path = path or self.latest_checkpoint()
        if path is None:
            return None
        state = self.read_checkpoint_state(path)
        meta = state.get("meta", {})
        for key, want in (expect or {}).items():
            have = meta.get(key)
            if _canonical(have) != _canonical(want):
                raise CheckpointError(
                    f"checkpoint {path} does not match this run: {key} is {_short(have)} "
                    f"in the checkpoint but {_short(want)} now")
        absent = sorted(set(trackables) - set(state.get("trackables", trackables)))
        if partial and absent:
            raise CheckpointError(f"checkpoint {path} does not hold {', '.join(absent)}")
        missing = sorted(set(state.get("trackables", [])) - set(trackables))
        if missing and not partial:
            raise CheckpointError(f"checkpoint {path} has objects this run lacks: {', '.join(missing)}")
        objects, manifest = _checkpointable(trackables)
        _compare_manifests(path, state.get("variables", {}), manifest)
        prefix = os.path.join(path, _PREFIX)
        try:
            reader = tf.train.load_checkpoint(prefix)
            # Read every tensor before touching any variable: a damaged file
            # must fail here, not halfway through the restore.
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
        except Exception as err:  # NotFoundError, DataLossError, IndexError, ...
            raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {_one_line(err)}") from None
        try:
            status = tf.train.Checkpoint(**objects).read(prefix)
            status.assert_existing_objects_matched()
            # Every variable of the run must come from the checkpoint.
            status.expect_partial()
            if partial:
                _assert_given_restored(status)
            else:
                _assert_all_restored(trackables, status)
        except CheckpointError:
            raise
        except Exception as err:  # ValueError, AssertionError, tf.errors.OpError, ...
            msg = _one_line(err).split(" Showing")[0]
            if "incompatible tensor with shape" in msg or "shape" in msg.lower():
                raise CheckpointError(f"checkpoint {path} does not match this model "
                                      f"(different genotype or shape?): {msg}") from None
            raise CheckpointError(f"checkpoint {path} cannot be restored: {msg}") from None
        return state


def _checkpointable(trackables: dict):
    """Replace Keras layers/models/optimizers by a module holding their
    variables in order, and describe those variables.

    ``tf.train.Checkpoint`` does not reach every variable of a Keras 3 model
    (sub-layers kept in Python lists, SeedGenerator states are skipped
    silently), so Keras objects are saved as the flat, ordered list
    ``obj.variables`` -- deterministic for the same architecture -- and the
    manifest (path below the root, shape, dtype per variable) lets a
    mismatch be reported precisely before anything is restored."""
    import keras
    import tensorflow as tf

    objects, manifest = {}, {}
    for name, obj in trackables.items():
        if isinstance(obj, (keras.Layer, keras.optimizers.Optimizer)):
            variables = list(obj.variables)
            holder = tf.Module(name=f"{name}_variables")
            holder.variables_in_order = [v.value if isinstance(v, keras.Variable) else v
                                         for v in variables]
            objects[name] = holder
            manifest[name] = [[_relative_path(v), list(v.shape), str(v.dtype)] for v in variables]
        else:
            objects[name] = obj
    return objects, manifest


def _relative_path(variable) -> str:
    path = getattr(variable, "path", None) or variable.name
    return path.split("/", 1)[1] if "/" in path else path


def _compare_manifests(path: str, saved: dict, current: dict) -> None:
    for name, now in current.items():
        if name not in saved:
            continue   # checkpoints written before manifests existed
        then = saved[name]
        if len(then) != len(now):
            raise CheckpointError(
                f"checkpoint {path} does not match this model (different genotype or shape?): "
                f"{name} has {len(then)} variables in the checkpoint but {len(now)} now")
        for i, ((p0, s0, d0), (p1, s1, d1)) in enumerate(zip(then, now)):
            if list(s0) != list(s1) or d0 != d1:
                raise CheckpointError(
                    f"checkpoint {path} does not match this model (different genotype or shape?): "
                    f"{name} variable {i} is {p0} {tuple(s0)} {d0} in the checkpoint but "
                    f"{p1} {tuple(s1)} {d1} now")


def _assert_all_restored(trackables: dict, status) -> None:
    """Raise CheckpointError when a variable of ``trackables`` got no value."""
    try:
        status.assert_nontrivial_match()
    except AssertionError as err:
        raise CheckpointError(f"checkpoint restores nothing of this run: {_one_line(err)}") from None
    try:
        status.assert_consumed()
    except AssertionError as err:
        msg = _one_line(err).split(" Showing")[0]
        raise CheckpointError(
            f"checkpoint does not match this model (different genotype or shape?): {msg}") from None


def _assert_given_restored(status) -> None:
    """Partial restore: the checkpoint may hold more, but it must restore something."""
    try:
        status.assert_nontrivial_match()
    except AssertionError as err:
        raise CheckpointError(f"checkpoint restores nothing of the given objects: {_one_line(err)}") from None


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=json_default)


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, default=json_default) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
