"""Process-level TensorFlow settings, applied before TensorFlow is imported.

Call :func:`quiet_tensorflow` first thing in a script (before ``import
tensorflow``), and :func:`limit_malloc_arenas` before any thread starts;
call :func:`configure_threads` once TensorFlow is imported and before any op
runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.abc
import importlib.util
import os
import sys
import tempfile


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to a temporary file; replay it if the body fails.

    TensorFlow's C++ start-up messages (cudart stub, cuInit, "All log messages
    before absl::InitializeLog()") are printed before TF_CPP_MIN_LOG_LEVEL is
    read, so only a file-descriptor redirect hides them.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # e.g. pytest capture objects
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        except BaseException:
            os.dup2(saved, fd)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Import hook: the first ``import tensorflow`` runs with stderr silenced
    (and lists devices, which prints the CUDA probe messages), so commands
    that never need TensorFlow never pay for importing it."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with _stderr_silenced():
                exec_module(module)
                module.config.list_physical_devices()

        spec.loader.exec_module = quiet_exec_module
        return spec


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up log noise off the user's screen.

    Call before TensorFlow is imported; TensorFlow is not imported here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    # oneDNN's primitive cache thrashes on NAS networks (many shapes) at its
    # default size of 1024; a larger cache was measured faster here.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover - absl ships with TF
        pass


_M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(count: int | None = None) -> bool:
    """Cap the number of glibc malloc arenas; call before any thread starts.

    glibc gives threads their own arenas (up to 8 per core), and memory freed
    in one stays mapped there, so TensorFlow's peak RSS climbs while a large
    graph is optimised and first run.  ``count`` defaults to one arena per
    inter-op thread (:func:`inter_op_threads`).  Fewer arenas lower the peak
    RSS, but one arena shared by several inter-op threads serialises their
    allocations and slows the steps, second-order search most; one per
    thread is the trade-off measured in docs/benchmarks.md.  Leaves the setting
    alone if ``MALLOC_ARENA_MAX`` is set (glibc has read it) and off glibc.
    Returns whether it applied.
    """
    if count is None:
        count = inter_op_threads()
    if count < 1:
        raise ValueError(f"malloc arenas must be at least 1, got {count}")
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    return bool(mallopt(_M_ARENA_MAX, int(count)))


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Set TensorFlow's thread pools (must run before the first op).

    On small CPUs, one intra-op thread and two inter-op threads were measured
    faster for NAS cells (many small independent ops) than the defaults.
    ``None`` keeps TensorFlow's default.  For the inter-op pool of a run fed
    by ``tf.data`` see :func:`inter_op_threads`.  Silently ignored once TF
    has initialised its pools (it raises RuntimeError then).
    """
    import tensorflow as tf
    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        pass


def configure_graph_optimizer() -> bool:
    """Make TensorFlow's graph optimiser (Grappler) lighter on a CPU-only
    process: one round of its passes instead of two, and no memory or layout
    optimiser.  Call before the first ``tf.function`` runs, from the thread
    that runs the steps (TensorFlow keeps its call options per thread);
    ``search.py`` does.

    Grappler takes most of the first call of a search step (its graph has
    tens of thousands of operations), and on a CPU the second round, the
    memory optimiser (GPU swapping heuristics) and the layout optimiser
    (NCHW for cuDNN) change nothing that the steps use; without them the
    first call is much shorter at the same step time and a slightly lower
    peak (docs/benchmarks.md).  With a GPU visible nothing changes.  The
    round count and the memory optimiser have no public switch, so they go
    through the eager context's base config; if a TensorFlow release
    removes that, only the layout optimiser is switched off.  Returns
    whether the lighter settings applied.
    """
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.optimizer.set_experimental_options({"layout_optimizer": False})
    try:
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
        from tensorflow.python.eager import context
        ctx = context.context()
        config = config_pb2.ConfigProto()
        if ctx._config is not None:
            config.CopyFrom(ctx._config)
        rewrite = config.graph_options.rewrite_options
        rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
        rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        ctx._config = config
        ctx._thread_local_data.function_call_options = None  # rebuilt from the config
    except (ImportError, AttributeError):  # pragma: no cover - a TensorFlow without the hook
        return False
    return True


def inter_op_threads(requested: int | None = None, *, iterators_per_epoch: bool = False) -> int:
    """The inter-op pool size for a run that feeds from ``tf.data``.

    One thread per core (TensorFlow's default) is the fastest for these
    networks; a bigger pool slows the training step (docs/benchmarks.md).  But
    destroying a tf.data iterator blocks inter-op threads, and with 2 threads
    long runs that made a new iterator every epoch deadlocked (seen twice;
    TF issues #10369, #48418).  Runs that keep one iterator per pipeline
    (:class:`tfnas.data.BatchStream`) get one thread per core;
    ``iterators_per_epoch=True`` (multi-worker training, whose per-worker
    batch counts are not known ahead) keeps the >= 8-thread work-around.
    ``requested`` wins."""
    if requested:
        return int(requested)
    cores = os.cpu_count() or 1
    return max(8, 2 * cores) if iterators_per_epoch else max(2, cores)


def split_cpu(devices: int) -> None:
    """Expose ``devices`` logical CPU devices (for tf.distribute tests/runs).
    Must run before TensorFlow initialises its devices."""
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
