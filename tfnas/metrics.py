"""Loss and accuracy, one way everywhere: example-weighted means.

A step returns the *sums* of one batch, ``[loss sum, correct, count]``
(:func:`batch_sums`); :class:`MeanMetrics` adds them over batches (and
replicas) and divides once, so a smaller last batch weighs what its
examples weigh.  Training, evaluation, search and probes report these.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["cross_entropy", "batch_sums", "MeanMetrics"]


def cross_entropy(labels, logits):
    """Per-example sparse categorical cross-entropy from logits (float32)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))


def batch_sums(labels, logits, per_example_loss=None):
    """``[sum of the loss, correct predictions, examples]`` of one batch
    (float32); ``per_example_loss`` defaults to :func:`cross_entropy`."""
    if per_example_loss is None:
        per_example_loss = cross_entropy(labels, logits)
    labels = tf.cast(labels, tf.int64)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    return tf.stack([tf.reduce_sum(per_example_loss), correct, count])


class MeanMetrics:
    """Accumulates :func:`batch_sums` results; :meth:`result` gives
    ``{"loss", "acc", "examples"}`` (example-weighted means)."""

    def __init__(self):
        self.total = None
        self.batches = 0

    def add(self, sums) -> None:
        self.total = sums if self.total is None else self.total + sums
        self.batches += 1

    def values(self) -> tuple:
        """``(loss sum, correct, count)`` as Python floats."""
        if self.total is None:
            return 0.0, 0.0, 0.0
        return tuple(float(v) for v in self.total.numpy())

    def finite(self) -> bool:
        return math.isfinite(self.values()[0])

    def result(self) -> dict:
        loss_sum, correct, count = self.values()
        if not count:
            return {"loss": float("nan"), "acc": float("nan"), "examples": 0}
        return {"loss": loss_sum / count, "acc": correct / count, "examples": int(count)}
