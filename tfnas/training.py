"""Training a genotype from scratch: the reference optimizer, the compiled
steps, and :func:`train` (the whole run, on the run driver).

What is implemented (the DARTS ``train.py`` semantics, stated precisely):

* **Optimizer**: PyTorch-style SGD with momentum and *coupled* L2 weight
  decay, ``d = g + wd·w; buf = μ·buf + d; w -= lr·buf`` (no dampening, no
  Nesterov), applied to every trainable variable (BN γ/β included, as the
  reference).  This is *not* Keras' ``weight_decay`` (decoupled, AdamW-style)
  and not Keras' SGD either (which keeps ``lr`` inside the momentum buffer).
* **Gradient clipping**: ``torch.nn.utils.clip_grad_norm_`` on the global norm
  of the raw gradients (before weight decay), max norm 5, computed on the
  gradients summed over replicas.
* **Learning rate**: cosine from ``lr`` to ``lr_min`` (default 0) over the
  epochs, **per epoch** like the reference (``CosineAnnealingLR`` stepped
  once per epoch; epoch ``e`` of ``E`` uses
  ``lr_min + (lr-lr_min)(1+cos(πe/E))/2``).
* **Loss**: cross-entropy, plus ``auxiliary_weight`` (0.4) times the
  auxiliary head's cross-entropy when the model has one.  The logged train
  loss is this objective; train accuracy uses the main logits.
* **Drop path**: ``drop_path_prob·e/E`` in epoch ``e`` (0-based), assigned to
  ``model.drop_path_prob`` before the epoch (no retracing).
* **Batches**: the last partial batch of an epoch is kept (as the reference);
  the step functions have a batch-size-agnostic input signature, so each is
  traced exactly once per run and image size (see
  :attr:`Trainer.trace_counts`).
* **Mixed precision** (``mixed_precision``, off by default; for GPUs): the
  network computes in float16 under Keras' ``mixed_float16`` policy with
  float32 variables, BN statistics, logits and loss; the loss is scaled
  dynamically (:class:`DynamicLossScale`) and a step whose gradients are
  not finite changes no weight or momentum buffer.
* **Early crops** (``early_crop``, off by default; not in the reference): the
  first ``early_crop_epochs`` epochs train on random ``early_crop``-pixel
  square crops of the unpadded images (pixels keep their scale; the network
  is fully convolutional), the rest as above.  A step on smaller crops costs
  less (the step is compute-bound); the training step is traced once more
  at the switch.

Entry points: :func:`train` (data, model, run directory, resume, export),
:class:`Trainer` (the compiled steps, reusable on any model with the
NetworkCIFAR calling convention), :class:`ReferenceSGD`,
:func:`cosine_learning_rate`, :func:`make_strategy`.  The configuration
(:class:`TrainConfig`, :data:`PRESETS`) lives in :mod:`tfnas.config`, free
of TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from typing import Callable, NamedTuple

import keras
import tensorflow as tf

from tfnas import runtime
from tfnas.config import PRESETS, STRATEGIES, TrainConfig, TrainingConfigError, stem_for  # noqa: F401
from tfnas.data import BatchStream, describe, distribute, is_multiworker, open_dataset
from tfnas.export import export_model
from tfnas.metrics import MeanMetrics, batch_sums, cross_entropy
from tfnas.networks import build_network, count_parameters
from tfnas.ops import tf_variable
from tfnas.plan import parameter_counts
from tfnas.rundir import RunDir
from tfnas.runner import DivergedError, RunDriver, log_line, open_run

__all__ = [
    "PRESETS", "TrainConfig", "TrainingDivergedError", "TrainingConfigError", "ReferenceSGD",
    "DynamicLossScale", "Trainer",
    "cosine_learning_rate", "clip_by_global_norm_like_torch", "make_strategy", "train",
]

# The divergence of a training run (the run driver's error; exit code 3 in the CLI).
TrainingDivergedError = DivergedError


def cosine_learning_rate(epoch: int, epochs: int, lr: float, lr_min: float = 0.0) -> float:
    """``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch: epoch 0 -> lr."""
    if epochs <= 0:
        return lr
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def clip_by_global_norm_like_torch(grads, max_norm):
    """``torch.nn.utils.clip_grad_norm_``: scale by ``max_norm/(norm+1e-6)`` when < 1."""
    norm = tf.linalg.global_norm(grads)
    coef = tf.minimum(tf.cast(max_norm, norm.dtype) / (norm + 1e-6), 1.0)
    return [g * tf.cast(coef, g.dtype) for g in grads], norm


def make_strategy(name: str = "default"):
    """``default`` (one device), ``mirrored`` (all local devices) or
    ``multiworker`` (``TF_CONFIG`` cluster, collective all-reduce).  Create it
    before any other TensorFlow op."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise TrainingConfigError("--strategy multiworker needs the TF_CONFIG environment variable "
                             "(cluster and task of this worker)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def replica_gradients(tape, loss, variables) -> list:
    """The gradients of a replica's ``loss`` (zeros where a variable is not
    used), summed over the replicas in sync: what the optimizers apply."""
    grads = tape.gradient(loss, variables)
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    return grads


# -- optimizer ----------------------------------------------------------------------

class ReferenceSGD:
    """PyTorch SGD with momentum and L2 weight decay in the gradient.

    ``buf = μ·buf + (g + λ·w); w -= lr·buf``; with ``nesterov``,
    ``w -= lr·((g + λ·w) + μ·buf)`` (TensorFlow 1's Nesterov momentum, which
    ENAS's reference uses).  Create it (``build``) inside
    the strategy scope before the first step: the momentum buffers are then
    mirrored like the weights.  :meth:`apply` is called in replica context
    with gradients already summed over replicas; the update is applied once
    per variable through ``strategy.extended.update``.
    """

    def __init__(self, learning_rate: float, momentum: float = 0.9, weight_decay: float = 3e-4,
                 nesterov: bool = False):
        self.nesterov = bool(nesterov)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32,
                                         name="learning_rate")
        self.iterations = tf.Variable(0, trainable=False, dtype=tf.int64, name="iterations")
        self.buffers = None
        self._module = None

    def build(self, variables) -> None:
        buffers = []
        for i, var in enumerate(variables):
            v = tf_variable(var)
            buffers.append(tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                       name=f"momentum_{i}"))
        self.buffers = buffers
        module = tf.Module(name="reference_sgd")
        module.learning_rate, module.iterations = self.learning_rate, self.iterations
        module.momentum_buffers = buffers
        self._module = module

    @property
    def trackable(self):
        """A ``tf.Module`` holding every optimizer variable (for checkpoints)."""
        return self._module

    def apply(self, grads, variables, apply_if=None) -> None:
        """Update ``variables`` by ``grads``; with ``apply_if`` (a boolean
        tensor) False, the update leaves every weight and buffer as it is."""
        if self.buffers is None:
            raise RuntimeError("ReferenceSGD.build(variables) must run in the strategy scope first")
        variables = [tf_variable(v) for v in variables]
        nesterov = self.nesterov

        def update(var, grad, buf, scalars):
            # One fused kernel (buf = μ·buf + g'; w -= lr·buf) instead of ~10
            # ops per variable: the search step updates ~1,400 tensors, and
            # graph size is trace time and memory.
            lr, mu, decay, zero = scalars
            grad = grad + decay * var
            if apply_if is not None:   # skipped without control flow: buf = 1·buf + 0, w -= 0
                grad = tf.where(apply_if, grad, zero)
            return tf.raw_ops.ResourceApplyMomentum(
                var=var.handle, accum=buf.handle, lr=lr, grad=grad, momentum=mu, use_nesterov=nesterov)

        def merge(strategy, grads, lr):
            scalars = {}   # per dtype, made once: not three nodes per variable
            for var, grad, buf in zip(variables, grads, self.buffers):
                if var.dtype not in scalars:
                    scalars[var.dtype] = self._scalars(lr, var.dtype, apply_if)
                strategy.extended.update(var, update, args=(grad, buf, scalars[var.dtype]), group=False)
            strategy.extended.update(self.iterations, lambda it: it.assign_add(1), group=False)

        ctx = tf.distribute.get_replica_context()
        if ctx is None:   # already in cross-replica context
            merge(tf.distribute.get_strategy(), grads, self.learning_rate)
        else:
            ctx.merge_call(merge, args=(grads, self.learning_rate))

    def _scalars(self, lr, dtype, apply_if=None) -> tuple:
        """``(lr, μ, λ, 0)`` as tensors of ``dtype``; a skipped step
        (``apply_if`` False) has lr 0 and μ 1."""
        # convert first: tf.cast of a variable to its own dtype is the
        # variable, read again by every consumer
        lr, mu = tf.cast(tf.convert_to_tensor(lr), dtype), tf.constant(self.momentum, dtype)
        if apply_if is not None:
            lr = tf.where(apply_if, lr, tf.zeros_like(lr))
            mu = tf.where(apply_if, mu, tf.ones_like(mu))
        return lr, mu, tf.constant(self.weight_decay, dtype), tf.zeros((), dtype)


class DynamicLossScale:
    """Dynamic loss scaling for float16 gradients, as Keras'
    ``LossScaleOptimizer`` (which wraps Keras optimizers only, not
    :class:`ReferenceSGD`): the loss is multiplied by ``scale`` before
    differentiation and the gradients divided by it; a step with non-finite
    gradients is skipped and halves the scale, ``growth_steps`` finite steps
    in a row double it.  Create it in the strategy scope."""

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_steps: int = 2000):
        self.growth_steps = int(growth_steps)
        # every replica computes the same update (from all-reduced gradients)
        same = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.scale = tf.Variable(float(initial_scale), dtype=tf.float32, name="loss_scale", **same)
        self.good_steps = tf.Variable(0, dtype=tf.int64, name="good_steps", **same)
        self.trackable = tf.Module(name="loss_scale")
        self.trackable.scale, self.trackable.good_steps = self.scale, self.good_steps

    def scaled(self, loss):
        return loss * tf.cast(self.scale, loss.dtype)

    def unscaled(self, grads) -> tuple:
        """The gradients divided by the scale, and whether all are finite."""
        inverse = 1.0 / self.scale
        grads = [g * tf.cast(inverse, g.dtype) for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return grads, finite

    def update(self, finite) -> None:
        """Halve the scale after a non-finite step; double it after
        ``growth_steps`` finite ones."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_steps)
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                                   tf.maximum(self.scale / 2.0, 1.0)))
        self.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)),
                                        self.good_steps + 1, tf.zeros_like(self.good_steps)))


# -- the compiled steps -----------------------------------------------------------------

class CompiledSteps(NamedTuple):
    """A trainer's compiled steps for one batch spec: ``train(batch)`` and
    ``evaluate(batch)`` each return ``[loss sum, correct, count]``."""
    train: Callable
    evaluate: Callable


class Trainer:
    """Compiled train/eval steps for a model with the NetworkCIFAR calling
    convention (``call_with_aux``, ``drop_path_prob``), under a strategy.

    Build it inside ``strategy.scope()`` *after* the model is built; it
    creates the optimizer buffers at once.  ``train_epoch``/``evaluate``
    take (undistributed) datasets of ``(images, labels)``.  ``loss_scale``:
    scale the loss dynamically (:class:`DynamicLossScale`), for a model
    under a float16 policy.
    """

    def __init__(self, model, strategy, *, lr=0.025, momentum=0.9, weight_decay=3e-4,
                 grad_clip=5.0, auxiliary_weight=0.4, loss_scale=False):
        self.model, self.strategy = model, strategy
        self.grad_clip, self.auxiliary_weight = float(grad_clip), float(auxiliary_weight)
        self.optimizer = ReferenceSGD(lr, momentum, weight_decay)
        self.optimizer.build(model.trainable_variables)
        self.loss_scale = DynamicLossScale() if loss_scale else None
        self.trace_counts = {"train": 0, "eval": 0}
        self._compiled = {}

    def trackables(self) -> dict:
        """Everything a checkpoint must hold to resume exactly: the model (all
        its variables, drop-path random streams included) and the optimizer."""
        trackables = {"model": self.model, "optimizer": self.optimizer.trackable}
        if self.loss_scale is not None:
            trackables["loss_scale"] = self.loss_scale.trackable
        return trackables

    # replica functions
    def _replica_train(self, x, y):
        model = self.model
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits, aux = model.call_with_aux(x, training=True)
            per_example = cross_entropy(y, logits)
            if aux is not None:
                per_example = per_example + self.auxiliary_weight * cross_entropy(y, aux)
            loss = tf.nn.compute_average_loss(per_example)
            if self.loss_scale is not None:
                loss = self.loss_scale.scaled(loss)
        grads = replica_gradients(tape, loss, variables)
        finite = None
        if self.loss_scale is not None:
            grads, finite = self.loss_scale.unscaled(grads)
        grads, _ = clip_by_global_norm_like_torch(grads, self.grad_clip)
        self.optimizer.apply(grads, variables, apply_if=finite)
        if self.loss_scale is not None:
            self.loss_scale.update(finite)
        return batch_sums(y, logits, per_example)

    def _replica_eval(self, x, y):
        return batch_sums(y, self.model(x, training=False))

    def compiled(self, element_spec) -> "CompiledSteps":
        """The compiled train and eval steps for batches of ``element_spec``
        (a dataset's, distributed or not): one pair per spec, each traced
        on its first call only."""
        key = str(element_spec)
        if key in self._compiled:
            return self._compiled[key]
        strategy = self.strategy

        def train_fn(batch):
            self.trace_counts["train"] += 1   # Python side effect: runs at trace time only
            x, y = batch
            sums = strategy.run(self._replica_train, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        def eval_fn(batch):
            self.trace_counts["eval"] += 1
            x, y = batch
            sums = strategy.run(self._replica_eval, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        steps = CompiledSteps(tf.function(train_fn, input_signature=[element_spec]),
                              tf.function(eval_fn, input_signature=[element_spec]))
        self._compiled[key] = steps
        return steps

    def set_epoch(self, epoch: int, epochs: int, lr: float, lr_min: float, drop_path_prob: float) -> tuple:
        """Assign the epoch's learning rate and drop-path probability (variables)."""
        rate = cosine_learning_rate(epoch, epochs, lr, lr_min)
        p = float(drop_path_prob) * epoch / max(epochs, 1)
        self.optimizer.learning_rate.assign(rate)
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob.assign(p)
        return rate, p

    def _prepared(self, dataset):
        """``dataset`` distributed as this trainer's strategy needs."""
        return distribute(dataset, self.strategy)

    def stream(self, dataset, batches_per_pass: int):
        """A :class:`tfnas.data.BatchStream` over ``dataset``, for
        ``train_epoch``/``evaluate``."""
        return BatchStream(self._prepared(dataset), batches_per_pass)

    def _batches(self, dataset):
        """The compiled steps for ``dataset``'s batches, and the batches of one
        pass: the next pass of a stream, or all of a dataset."""
        if hasattr(dataset, "next_pass"):
            return self.compiled(dataset.element_spec), dataset.next_pass()
        dist = self._prepared(dataset)
        return self.compiled(dist.element_spec), dist

    def train_epoch(self, dataset, progress=None, check_every: int = 20) -> dict:
        """One pass over ``dataset`` (a dataset or a :meth:`stream`); returns
        ``{"loss", "acc", "examples", "steps"}``.  Raises
        :class:`DivergedError` as soon as the loss is not finite.
        ``progress``: a :class:`tfnas.progress.Progress` to update."""
        metrics = MeanMetrics()
        compiled, batches = self._batches(dataset)
        for batch in batches:
            metrics.add(compiled.train(batch))
            steps = metrics.batches
            live = progress is not None and progress.wants_update()
            if steps % check_every == 0 or live:
                result = metrics.result()
                if not metrics.finite():
                    raise DivergedError(f"loss is {result['loss']} after {steps} steps")
                if live:
                    progress.update(steps, f"loss {result['loss']:.3f} acc {100 * result['acc']:5.1f}%")
        if not metrics.batches:
            raise ValueError("the training split produced no batches")
        result = metrics.result()
        if not metrics.finite():
            raise DivergedError(f"loss is {result['loss']} after {metrics.batches} steps")
        return {**result, "steps": metrics.batches}

    def evaluate(self, dataset) -> dict:
        """Loss and accuracy over one pass of ``dataset`` (a dataset or a :meth:`stream`)."""
        metrics = MeanMetrics()
        compiled, batches = self._batches(dataset)
        for batch in batches:
            metrics.add(compiled.evaluate(batch))
        return metrics.result()


# -- the whole run ---------------------------------------------------------------------

def _task_info(strategy, multiworker: bool):
    """(is_chief, task id) of this worker (single process: chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not multiworker or resolver is None or resolver.task_type is None:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    return task_type == "chief" or (task_type == "worker" and task_id == 0), task_id


class TrainingTask:
    """One training epoch for the run driver: the weights' pass (early crops
    first if configured), then evaluation of every split."""

    tensorboard_name = ""

    def __init__(self, config: TrainConfig, data, trainer: "Trainer", start_epoch: int,
                 end_epoch: int, multiworker: bool):
        self.config, self.data, self.trainer = config, data, trainer
        self.long_lived = not multiworker
        self.eval_splits = ["test"] + (["validation"] if config.validation else [])
        self._augmented = dict(augment=True, cutout=config.cutout, seed=config.seed)
        if self.long_lived:
            self._open_streams(start_epoch, end_epoch)

    def crop_of(self, epoch: int):
        """The training crop of a (0-based) epoch; None = the usual padded crop."""
        return self.config.early_crop if epoch < self.config.early_crop_epochs else None

    def _open_streams(self, start_epoch, end_epoch):
        # One iterator per pipeline for the whole run (see tfnas.data.BatchStream);
        # with early crops, one per run of epochs with the same crop (kept to the end).
        config, data, trainer = self.config, self.data, self.trainer
        steps = data.batches_per_epoch("train", config.batch_size)
        self.train_streams = {}
        for crop, group in itertools.groupby(range(start_epoch, end_epoch), key=self.crop_of):
            group = list(group)
            self.train_streams[crop] = trainer.stream(data.dataset(
                "train", config.batch_size, epochs=range(group[0], group[-1] + 1), crop=crop,
                **self._augmented), steps)
        self.eval_streams = {s: trainer.stream(data.dataset(s, config.eval_batch_size).repeat(),
                                               data.batches_per_epoch(s, config.eval_batch_size))
                             for s in self.eval_splits}

    def trackables(self) -> dict:
        return self.trainer.trackables()

    def checkpoint_state(self) -> dict:
        return {"step": int(self.trainer.optimizer.iterations.numpy()), "config": self.config.to_dict()}

    def run_epoch(self, epoch: int, progress) -> dict:
        config, trainer = self.config, self.trainer
        t0 = time.time()
        lr, p = trainer.set_epoch(epoch, config.epochs, config.lr, config.lr_min, config.drop_path_prob)
        crop = self.crop_of(epoch)
        if self.long_lived:
            train_data = self.train_streams[crop]
            eval_data = self.eval_streams
        else:   # workers shard the batches: each worker's count per epoch is its own
            train_data = self.data.dataset("train", config.batch_size, epoch=epoch, crop=crop,
                                           **self._augmented)
            eval_data = {s: self.data.dataset(s, config.eval_batch_size) for s in self.eval_splits}
        if progress is not None:
            progress.total = self.data.batches_per_epoch("train", config.batch_size)
        result = trainer.train_epoch(train_data, progress=progress)
        record = {"lr": lr, "drop_path_prob": p, "train_crop": crop, "train_loss": result["loss"],
                  "train_acc": result["acc"], "train_seconds": time.time() - t0}
        for split, ds in eval_data.items():
            evaluation = trainer.evaluate(ds)
            record[f"{split}_loss"], record[f"{split}_acc"] = evaluation["loss"], evaluation["acc"]
        record["steps"] = int(trainer.optimizer.iterations.numpy())
        return record

    def epoch_line(self, r: dict) -> str:
        parts = [f"epoch {r['epoch']:>3}/{self.config.epochs}", f"lr {r['lr']:.5f}",
                 f"train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%"
                 + (f" ({r['train_crop']}-px crops)" if r.get("train_crop") else "")]
        for s in self.eval_splits:
            parts.append(f"{s} loss {r[f'{s}_loss']:.4f} acc {100 * r[f'{s}_acc']:.2f}%")
        parts.append(f"{r['seconds']:.1f}s")
        return " | ".join(parts)

    def write_summaries(self, record: dict, step: int) -> None:
        every = self.config.histogram_every
        if every and (step % every == 0 or step == self.config.epochs or step == 1):
            for var in self.trainer.model.trainable_variables:
                tf.summary.histogram(f"weights/{var.path}", tf_variable(var))


def _write_static_summaries(run, genotype, config, counts) -> None:
    writer = run.tensorboard_writer()
    with writer.as_default(step=0):
        tf.summary.text("genotype", tf.constant(f"`{genotype.to_repr()}`"))
        tf.summary.text("config", tf.constant("```\n" + json.dumps(config.to_dict(), indent=2) + "\n```"))
        tf.summary.text("parameters", tf.constant(
            f"{counts['params']:,} without the auxiliary head; auxiliary head {counts['params_auxiliary']:,}"))
        try:
            from tfnas import diagrams   # Matplotlib only when a run starts
            for kind in ("normal", "reduce"):
                png = diagrams.cell_figure_png_bytes(genotype.cell(kind))
                tf.summary.image(f"cells/{kind}", tf.image.decode_png(png, channels=4)[None])
        except Exception:  # diagrams are a nicety; never fail a run for them
            pass
    writer.flush()


def _start_runtime(config: TrainConfig, strategy):
    """Process-level TF settings (before any op), determinism, seeds, strategy."""
    runtime.configure_threads(config.intra_op_threads, runtime.inter_op_threads(
        config.inter_op_threads, iterators_per_epoch=config.strategy == "multiworker"))
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    return strategy


def _open_data(config: TrainConfig, log):
    data = open_dataset(config.dataset, config.data_dir, validation=config.validation)
    h, w, _ = data.info.image_shape
    if config.early_crop and not config.early_crop < min(h, w):
        raise TrainingConfigError(f"--early-crop must be smaller than the {h}x{w} images "
                                  f"(got {config.early_crop})")
    config.stem = stem_for(config.stem, data.info.image_shape)
    log_line(log, describe(data.info))
    return data


def _parameter_line(genotype, config, counts) -> str:
    return (f"genotype {genotype.name or '(unnamed)'}: C={config.init_channels}, {config.layers} layers; "
            f"parameters without the auxiliary head: {counts['params']:,} (the reference's 'param size'); "
            f"auxiliary head: {counts['params_auxiliary']:,}"
            f"{' (trained)' if config.auxiliary else ' (not used in this run)'}")


def train(config: TrainConfig, out_dir: str, *, resume: bool = False, export_dir: str | None = None,
          log=sys.stdout, stop_after_epochs: int | None = None, strategy=None,
          keep_epochs=()) -> dict:
    """Train ``config`` into run directory ``out_dir`` and export the model.

    ``resume=True`` continues from the directory's latest checkpoint (the
    stored config is used, except ``epochs`` and ``strategy`` which may be
    changed).  ``stop_after_epochs`` ends the process-level loop early (for
    tests).  The checkpoints of the epochs in ``keep_epochs`` (from 1) are
    kept for good (e.g. to probe them later), besides the newest two.
    Returns a summary dict (final metrics, paths, parameter
    counts).  Library errors: ``GenotypeError``, ``DatasetError``,
    ``CheckpointError``, ``ValueError``, :class:`TrainingDivergedError`.
    """
    run, config = open_run(out_dir, config, resume=resume, from_dict=TrainConfig.from_dict,
                           may_change=("epochs", "strategy"))
    config.validate()
    genotype = config.resolved_genotype()
    strategy = _start_runtime(config, strategy)
    multiworker = is_multiworker(strategy)   # the strategy actually used (a caller may pass one)
    is_chief, task_id = _task_info(strategy, multiworker)
    if not is_chief:   # other workers keep private checkpoints (collectives need them all)
        run, log = RunDir(os.path.join(out_dir, "workers", str(task_id))), None
    data = _open_data(config, log)
    info = data.info
    with strategy.scope():
        model = build_network(config.network_spec(info))
        trainer = Trainer(model, strategy, lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                          auxiliary_weight=config.auxiliary_weight,
                          loss_scale=config.mixed_precision)
    # built count for the network trained; the head's size does not depend on the stem
    counts = {**parameter_counts(genotype, config.init_channels, config.layers, info.num_classes),
              "params": count_parameters(model, auxiliary=False)}
    log_line(log, _parameter_line(genotype, config, counts))
    driver = RunDriver(run, epochs=config.epochs, meta=config.checkpoint_meta(info), log=log,
                       summaries=is_chief, keep_epochs=keep_epochs)
    start = driver.restore(trainer.trackables(), resume)
    if not resume:
        run.write_config(config.to_dict())
        if is_chief:
            _write_static_summaries(run, genotype, config, counts)
    end = config.epochs if stop_after_epochs is None else min(config.epochs, start + stop_after_epochs)
    task = TrainingTask(config, data, trainer, start, end, multiworker)
    history = driver.run_epochs(task, start, end)
    final = history[-1] if history else None
    summary = {"run_dir": run.path, "genotype": genotype.name, "epochs_done": final["epoch"] if final else 0,
               "epochs": config.epochs, "final": final, **counts,
               "trace_counts": dict(trainer.trace_counts)}
    if final is not None and final["epoch"] >= config.epochs and is_chief and export_dir:
        summary.update(export_model(model, info, export_dir))
        log_line(log, f"exported SavedModel to {summary['saved_model']} and {summary['keras_file']}")
    return summary
