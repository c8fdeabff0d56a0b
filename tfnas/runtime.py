"""Process-level TensorFlow settings, applied before TensorFlow is imported.

Call :func:`quiet_tensorflow` first thing in a script (before ``import
tensorflow``); call :func:`configure_threads` once TensorFlow is imported and
before any op runs.
"""

from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up log noise off the user's screen."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    # oneDNN's primitive cache thrashes on NAS networks (many shapes) at its
    # default size of 1024; a larger cache was measured faster here.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover - absl ships with TF
        pass


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Set TensorFlow's thread pools (must run before the first op).

    On small CPUs, one intra-op thread and two inter-op threads were measured
    faster for NAS cells (many small independent ops) than the defaults.
    ``None`` keeps TensorFlow's default.  Silently ignored once TF has
    initialised its pools (it raises RuntimeError then).
    """
    import tensorflow as tf
    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        pass


def split_cpu(devices: int) -> None:
    """Expose ``devices`` logical CPU devices (for tf.distribute tests/runs).
    Must run before TensorFlow initialises its devices."""
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
