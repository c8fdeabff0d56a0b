"""Training a genotype from scratch: presets, the reference optimizer, the loop.

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
* **Early crops** (``early_crop``, off by default; not in the reference): the
  first ``early_crop_epochs`` epochs train on random ``early_crop``-pixel
  square crops of the unpadded images (pixels keep their scale; the network
  is fully convolutional), the rest as above.  A 24-pixel step on 32-pixel
  CIFAR costs ~0.57x; the training step is traced once more at the switch.

Entry points: :data:`PRESETS`, :class:`TrainConfig` (``from_preset``),
:func:`train` (the whole run: data, model, run directory, resume, export),
:class:`Trainer` (the compiled steps, reusable on any model with the
NetworkCIFAR calling convention), :class:`ReferenceSGD`,
:func:`cosine_learning_rate`, :func:`make_strategy`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

__all__ = [
    "PRESETS", "TrainConfig", "TrainingDivergedError", "TrainingConfigError", "ReferenceSGD", "Trainer",
    "cosine_learning_rate", "clip_by_global_norm_like_torch", "make_strategy", "train",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class TrainingConfigError(ValueError):
    """A training configuration that cannot run (bad values, occupied run directory)."""


# -- configuration ----------------------------------------------------------------

# The reference evaluation settings, then what each preset changes.
_REFERENCE = dict(lr=0.025, lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
                  auxiliary_weight=0.4)
PRESETS = {
    # The paper's final-model training (DARTS train.py with --auxiliary --cutout).
    "paper": dict(_REFERENCE, init_channels=36, layers=20, epochs=600, batch_size=96,
                  auxiliary=True, cutout=16, drop_path_prob=0.2),
    # The variant studies: same network, no cutout / aux / drop path.
    "study": dict(_REFERENCE, init_channels=36, layers=20, epochs=600, batch_size=96,
                  auxiliary=False, cutout=0, drop_path_prob=0.0),
    # A 2-core CPU in about half an hour on cifar10-mini (10k images): a
    # C=16, 8-layer network, batch 64, no aux, cutout or drop path (drop path
    # slows a short run's convergence).  Thread pools: see train() and
    # runtime.inter_op_threads.  20 epochs reached 75.3% here (~92 s per
    # epoch, 32.5 min); 16 epochs gave 72.8%, and 6 layers x 21 epochs 74.3%
    # in 30.0 min (docs/benchmarks.md).
    "small": dict(_REFERENCE, init_channels=16, layers=8, epochs=20, batch_size=64,
                  auxiliary=False, cutout=0, drop_path_prob=0.0),
}
STRATEGIES = ("default", "mirrored", "multiworker")
_SMALL = PRESETS["small"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    genotype: str = "DARTS_V2"
    dataset: str = "cifar10"
    data_dir: str | None = None
    # The defaults are the small preset's (one place: PRESETS).
    preset: str = "small"
    init_channels: int = _SMALL["init_channels"]
    layers: int = _SMALL["layers"]
    epochs: int = _SMALL["epochs"]
    batch_size: int = _SMALL["batch_size"]
    eval_batch_size: int = 256
    lr: float = _SMALL["lr"]
    lr_min: float = _SMALL["lr_min"]
    momentum: float = _SMALL["momentum"]
    weight_decay: float = _SMALL["weight_decay"]
    grad_clip: float = _SMALL["grad_clip"]
    auxiliary: bool = _SMALL["auxiliary"]
    auxiliary_weight: float = _SMALL["auxiliary_weight"]
    cutout: int = _SMALL["cutout"]
    drop_path_prob: float = _SMALL["drop_path_prob"]
    early_crop: int = 0             # pixels; 0 = off (no preset sets it)
    early_crop_epochs: int = 0
    validation: float = 0           # examples (or fraction) carved from train, also evaluated
    seed: int = 0
    deterministic: bool = False
    strategy: str = "default"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    histogram_every: int = 10       # weight histograms every N epochs (and the last)
    stem: str = "auto"              # cifar | imagenet64 | auto (imagenet64 for 64x64 images)
    # Filled in by train(): the resolved genotype and the dataset's description.
    genotype_resolved: dict = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: str = "small", **overrides) -> "TrainConfig":
        if preset not in PRESETS:
            raise TrainingConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = dict(PRESETS[preset], preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        problems = []
        for name in ("init_channels", "layers", "epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.layers < 3:
            problems.append(f"layers must be >= 3 (got {self.layers})")
        if not self.lr > 0 or not math.isfinite(self.lr):
            problems.append(f"lr must be positive (got {self.lr})")
        if not 0 <= self.drop_path_prob < 1:
            problems.append(f"drop_path_prob must be in [0, 1) (got {self.drop_path_prob})")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1) (got {self.momentum})")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.cutout < 0:
            problems.append("weight_decay and cutout must be >= 0 and grad_clip > 0")
        if self.early_crop < 0 or self.early_crop_epochs < 0:
            problems.append(f"early_crop and early_crop_epochs must be >= 0 "
                            f"(got {self.early_crop}, {self.early_crop_epochs})")
        elif bool(self.early_crop) != bool(self.early_crop_epochs):
            problems.append("early_crop and early_crop_epochs go together: give both or neither")
        if self.stem not in ("auto", "cifar", "imagenet64"):
            problems.append(f"stem must be auto, cifar or imagenet64 (got {self.stem!r})")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r})")
        if problems:
            raise TrainingConfigError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# Fields whose change makes a checkpoint unusable (checked on --resume).
_MODEL_FIELDS = ("init_channels", "layers", "auxiliary", "stem")


def cosine_learning_rate(epoch: int, epochs: int, lr: float, lr_min: float = 0.0) -> float:
    """``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch: epoch 0 -> lr."""
    if epochs <= 0:
        return lr
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def clip_by_global_norm_like_torch(grads, max_norm):
    """``torch.nn.utils.clip_grad_norm_``: scale by ``max_norm/(norm+1e-6)`` when < 1."""
    import tensorflow as tf
    norm = tf.linalg.global_norm(grads)
    coef = tf.minimum(tf.cast(max_norm, norm.dtype) / (norm + 1e-6), 1.0)
    return [g * tf.cast(coef, g.dtype) for g in grads], norm


def make_strategy(name: str = "default"):
    """``default`` (one device), ``mirrored`` (all local devices) or
    ``multiworker`` (``TF_CONFIG`` cluster, collective all-reduce).  Create it
    before any other TensorFlow op."""
    import tensorflow as tf
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


# -- optimizer ----------------------------------------------------------------------

class ReferenceSGD:
    """PyTorch SGD with momentum and L2 weight decay in the gradient.

    ``buf = μ·buf + (g + λ·w); w -= lr·buf``.  Create it (``build``) inside
    the strategy scope before the first step: the momentum buffers are then
    mirrored like the weights.  :meth:`apply` is called in replica context
    with gradients already summed over replicas; the update is applied once
    per variable through ``strategy.extended.update``.
    """

    def __init__(self, learning_rate: float, momentum: float = 0.9, weight_decay: float = 3e-4):
        import tensorflow as tf
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32,
                                         name="learning_rate")
        self.iterations = tf.Variable(0, trainable=False, dtype=tf.int64, name="iterations")
        self.buffers = None
        self._module = None

    def build(self, variables) -> None:
        import tensorflow as tf
        buffers = []
        for i, var in enumerate(variables):
            v = _tf_variable(var)
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

    def apply(self, grads, variables) -> None:
        import tensorflow as tf
        if self.buffers is None:
            raise RuntimeError("ReferenceSGD.build(variables) must run in the strategy scope first")
        variables = [_tf_variable(v) for v in variables]
        momentum, decay = self.momentum, self.weight_decay

        def update(var, grad, buf, lr):
            # One fused kernel (buf = μ·buf + g'; w -= lr·buf) instead of ~10
            # ops per variable: the search step updates ~1,400 tensors, and
            # graph size is trace time and memory.
            return tf.raw_ops.ResourceApplyMomentum(
                var=var.handle, accum=buf.handle, lr=tf.cast(lr, var.dtype),
                grad=grad + decay * var, momentum=tf.constant(momentum, var.dtype))

        def merge(strategy, grads, lr):
            for var, grad, buf in zip(variables, grads, self.buffers):
                strategy.extended.update(var, update, args=(grad, buf, lr), group=False)
            strategy.extended.update(self.iterations, lambda it: it.assign_add(1), group=False)

        ctx = tf.distribute.get_replica_context()
        if ctx is None:   # already in cross-replica context
            merge(tf.distribute.get_strategy(), grads, self.learning_rate)
        else:
            ctx.merge_call(merge, args=(grads, self.learning_rate))


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
    take (undistributed) datasets of ``(images, labels)``.
    """

    def __init__(self, model, strategy, *, lr=0.025, momentum=0.9, weight_decay=3e-4,
                 grad_clip=5.0, auxiliary_weight=0.4):
        import tensorflow as tf
        self.model, self.strategy = model, strategy
        self.grad_clip, self.auxiliary_weight = float(grad_clip), float(auxiliary_weight)
        self.optimizer = ReferenceSGD(lr, momentum, weight_decay)
        self.optimizer.build(model.trainable_variables)
        self.trace_counts = {"train": 0, "eval": 0}
        self._compiled = {}
        self._tf = tf

    def trackables(self) -> dict:
        """Everything a checkpoint must hold to resume exactly: the model (all
        its variables, drop-path random streams included) and the optimizer."""
        return {"model": self.model, "optimizer": self.optimizer.trackable}

    # replica functions
    def _replica_train(self, x, y):
        tf = self._tf
        model = self.model
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits, aux = model.call_with_aux(x, training=True)
            per_example = _cross_entropy(y, logits)
            if aux is not None:
                per_example = per_example + self.auxiliary_weight * _cross_entropy(y, aux)
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, _ = clip_by_global_norm_like_torch(grads, self.grad_clip)
        self.optimizer.apply(grads, variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        count = tf.cast(tf.shape(y)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), correct, count])

    def _replica_eval(self, x, y):
        tf = self._tf
        logits = self.model(x, training=False)
        per_example = _cross_entropy(y, logits)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(y)[0], tf.float32)])

    def compiled(self, element_spec) -> "CompiledSteps":
        """The compiled train and eval steps for batches of ``element_spec``
        (a dataset's, distributed or not): one pair per spec, each traced
        on its first call only."""
        tf = self._tf
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
        from tfnas.data import distribute
        return distribute(dataset, self.strategy)

    def stream(self, dataset, batches_per_pass: int):
        """A :class:`tfnas.data.BatchStream` over ``dataset``, for
        ``train_epoch``/``evaluate``."""
        from tfnas.data import BatchStream
        return BatchStream(self._prepared(dataset), batches_per_pass)

    def _batches(self, dataset):
        """The compiled steps for ``dataset``'s batches, and the batches of one
        pass: the next pass of a stream, or all of a dataset."""
        if hasattr(dataset, "next_pass"):
            return self.compiled(dataset.element_spec), dataset.next_pass()
        dist = self._prepared(dataset)
        return self.compiled(dist.element_spec), dist

    def train_epoch(self, dataset, progress: Callable | None = None, steps_hint: int | None = None,
                    check_every: int = 20) -> dict:
        """One pass over ``dataset`` (a dataset or a :meth:`stream`); returns
        ``{"loss", "acc", "examples", "steps"}``.  Raises
        :class:`TrainingDivergedError` as soon as the loss is not finite."""
        total = None
        steps = 0
        compiled, batches = self._batches(dataset)
        for batch in batches:
            sums = compiled.train(batch)
            total = sums if total is None else total + sums
            steps += 1
            if steps % check_every == 0 or progress is not None:
                if progress is not None and not progress.wants_update():
                    continue
                values = total.numpy()
                if not math.isfinite(float(values[0])):
                    raise TrainingDivergedError(f"loss is {values[0]} after {steps} steps")
                if progress is not None:
                    progress.update(steps, steps_hint, values[0] / values[2], values[1] / values[2])
        if total is None:
            raise ValueError("the training split produced no batches")
        loss_sum, correct, count = (float(v) for v in total.numpy())
        if not math.isfinite(loss_sum):
            raise TrainingDivergedError(f"loss is {loss_sum / count} after {steps} steps")
        return {"loss": loss_sum / count, "acc": correct / count, "examples": int(count), "steps": steps}

    def evaluate(self, dataset) -> dict:
        """Loss and accuracy over one pass of ``dataset`` (a dataset or a :meth:`stream`)."""
        total = None
        compiled, batches = self._batches(dataset)
        for batch in batches:
            sums = compiled.evaluate(batch)
            total = sums if total is None else total + sums
        loss_sum, correct, count = (float(v) for v in total.numpy())
        return {"loss": loss_sum / count, "acc": correct / count, "examples": int(count)}


def _tf_variable(variable):
    """The ``tf.Variable`` behind a Keras variable (or the variable itself)."""
    import keras
    return variable.value if isinstance(variable, keras.Variable) else variable


def _cross_entropy(labels, logits):
    import tensorflow as tf
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))


# -- progress display ---------------------------------------------------------------

class EpochProgress:
    """A live bar within an epoch on a terminal (throttled); silent otherwise."""

    def __init__(self, stream, label: str, interval: float = 0.5):
        self.stream, self.label, self.interval = stream, label, interval
        self.start = self._last = time.time()
        self.batch_size = None

    def wants_update(self) -> bool:
        return time.time() - self._last >= self.interval

    def update(self, step, total, loss, acc):
        self._last = time.time()
        width = 24
        frac = min(step / total, 1.0) if total else 0.0
        bar = "=" * int(frac * width) + ">" + " " * (width - int(frac * width))
        rate = step / max(self._last - self.start, 1e-9)
        of = f"/{total}" if total else ""
        self.stream.write(f"\r{self.label} [{bar[:width + 1]}] {step}{of} loss {loss:.3f} "
                          f"acc {100 * acc:5.1f}% {rate:.1f} it/s ")
        self.stream.flush()

    def clear(self):
        self.stream.write("\r" + " " * 100 + "\r")
        self.stream.flush()


# -- the whole run ---------------------------------------------------------------------

def _task_info(strategy, multiworker: bool):
    """(is_chief, task id) of this worker (single process: chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not multiworker or resolver is None or resolver.task_type is None:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    return task_type == "chief" or (task_type == "worker" and task_id == 0), task_id


def _log(stream, text):
    if stream is not None:
        print(text, file=stream, flush=True)


def train(config: TrainConfig, out_dir: str, *, resume: bool = False, export_dir: str | None = None,
          log=sys.stdout, stop_after_epochs: int | None = None, strategy=None) -> dict:
    """Train ``config`` into run directory ``out_dir`` and export the model.

    ``resume=True`` continues from the directory's latest checkpoint (the
    stored config is used, except ``epochs`` and ``strategy`` which may be
    changed).  ``stop_after_epochs`` ends the process-level loop early (for
    tests).  Returns a summary dict (final metrics, paths, parameter
    counts).  Library errors: ``GenotypeError``, ``DatasetError``,
    ``CheckpointError``, ``ValueError``, :class:`TrainingDivergedError`.
    """
    from tfnas import runtime
    from tfnas.resolve import resolve_genotype
    from tfnas.rundir import RunDir, capture_python_rng, restore_python_rng

    run = RunDir(out_dir)
    if resume:
        if not os.path.isfile(run.config_path):
            raise FileNotFoundError(f"cannot resume: {run.config_path} not found")
        stored = TrainConfig.from_dict(run.read_config())
        if config.epochs:
            stored.epochs = config.epochs
        stored.strategy = config.strategy
        config = stored
    config.validate()
    genotype = _genotype_from_dict(config.genotype_resolved) if config.genotype_resolved \
        else resolve_genotype(config.genotype)
    config.genotype_resolved = {**genotype.to_dict(), "name": genotype.name}

    # Process-level TF settings come before any op, hence before the strategy
    # exists: the pool follows the configured name (see runtime.inter_op_threads).
    runtime.configure_threads(config.intra_op_threads, runtime.inter_op_threads(
        config.inter_op_threads, iterators_per_epoch=config.strategy == "multiworker"))
    import keras
    import tensorflow as tf
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if strategy is None:
        strategy = make_strategy(config.strategy)
    from tfnas.data import is_multiworker
    # The streams follow the strategy actually used (a caller may pass one).
    multiworker = is_multiworker(strategy)
    long_lived_iterators = not multiworker
    keras.utils.set_random_seed(config.seed)
    is_chief, task_id = _task_info(strategy, multiworker)
    if not is_chief:   # other workers keep private checkpoints (collectives need them all)
        run = RunDir(os.path.join(out_dir, "workers", str(task_id)))
        log = None

    from tfnas import data as data_lib
    from tfnas.networks import NetworkCIFAR, count_parameters, parameter_counts
    data = data_lib.open_dataset(config.dataset, config.data_dir, validation=config.validation)
    info = data.info
    h, w, c = info.image_shape
    if config.early_crop and not config.early_crop < min(h, w):
        raise TrainingConfigError(f"--early-crop must be smaller than the {h}x{w} images "
                                  f"(got {config.early_crop})")
    if config.stem == "auto":
        config.stem = "imagenet64" if (h, w) == (64, 64) else "cifar"
    stem = config.stem
    _log(log, data_lib.describe(info))

    with strategy.scope():
        model = NetworkCIFAR(genotype, init_channels=config.init_channels, layers=config.layers,
                             num_classes=info.num_classes, auxiliary=config.auxiliary, stem=stem)
        model.build((None, h, w, c))
        trainer = Trainer(model, strategy, lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                          auxiliary_weight=config.auxiliary_weight)
    # built count for the network trained; the head's size does not depend on the stem
    counts = parameter_counts(genotype, config.init_channels, config.layers, info.num_classes)
    counts["params"] = count_parameters(model, auxiliary=False)
    _log(log, f"genotype {genotype.name or '(unnamed)'}: C={config.init_channels}, {config.layers} layers; "
              f"parameters without the auxiliary head: {counts['params']:,} (the reference's 'param size'); "
              f"auxiliary head: {counts['params_auxiliary']:,}"
              f"{' (trained)' if config.auxiliary else ' (not used in this run)'}")

    trackables = dict(trainer.trackables())
    meta = {"genotype": config.genotype_resolved, "dataset": info.name,
            "num_classes": info.num_classes, "image_shape": list(info.image_shape),
            **{k: getattr(config, k) for k in _MODEL_FIELDS}}
    start_epoch, history = 0, []
    if resume and run.has_checkpoint():
        state = run.restore_checkpoint(trackables, expect=meta)
        start_epoch = int(state["epoch"])
        restore_python_rng(state.get("python_rng"))
        run.rewind_metrics("epoch", start_epoch)
        history = [r for r in run.read_metrics() if "epoch" in r]
        _log(log, f"resumed from {run.latest_checkpoint()} (epoch {start_epoch} of {config.epochs})")
    elif resume:   # stopped before its first checkpoint: start again, same config
        run.rewind_metrics("epoch", 0)
        _log(log, f"no checkpoint in {run.checkpoint_dir} yet; starting from epoch 1")
    else:
        if os.path.exists(run.metrics_path) and run.read_metrics():
            raise TrainingConfigError(f"{run.path} already holds a run; pass --resume to continue it "
                                      f"or choose another --out")
        run.write_config(config.to_dict())
        if is_chief:
            _write_static_summaries(run, genotype, config, counts, info)

    steps_per_epoch = data.batches_per_epoch("train", config.batch_size)
    eval_splits = ["test"] + (["validation"] if config.validation else [])
    stream_is_tty = log is not None and hasattr(log, "isatty") and log.isatty()
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, start_epoch + stop_after_epochs)
    train_augmented = dict(augment=True, cutout=config.cutout, seed=config.seed)

    def crop_of(epoch):   # the training crop of a (0-based) epoch; None = the usual padded crop
        return config.early_crop if epoch < config.early_crop_epochs else None

    if long_lived_iterators:
        # One iterator per pipeline for the whole run (see tfnas.data.BatchStream);
        # with early crops, one per run of epochs with the same crop (kept to the end).
        train_streams = {}
        for crop, group in itertools.groupby(range(start_epoch, end_epoch), key=crop_of):
            group = list(group)
            train_streams[crop] = trainer.stream(data.dataset(
                "train", config.batch_size, epochs=range(group[0], group[-1] + 1), crop=crop,
                **train_augmented), steps_per_epoch)
        eval_data = {s: trainer.stream(data.dataset(s, config.eval_batch_size).repeat(),
                                       data.batches_per_epoch(s, config.eval_batch_size))
                     for s in eval_splits}
    else:   # workers shard the batches: each worker's count per epoch is its own
        eval_data = {s: data.dataset(s, config.eval_batch_size) for s in eval_splits}
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        lr, p = trainer.set_epoch(epoch, config.epochs, config.lr, config.lr_min, config.drop_path_prob)
        if long_lived_iterators:
            train_ds = train_streams[crop_of(epoch)]
        else:
            train_ds = data.dataset("train", config.batch_size, epoch=epoch, crop=crop_of(epoch),
                                    **train_augmented)
        progress = EpochProgress(log, f"epoch {epoch + 1}/{config.epochs}") if stream_is_tty else None
        try:
            tr = trainer.train_epoch(train_ds, progress=progress, steps_hint=steps_per_epoch)
        except TrainingDivergedError as err:
            if progress:
                progress.clear()
            good = run.latest_checkpoint()
            where = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1} ({err}); stopped; {where} "
                f"(try a lower --lr or --grad-clip)") from None
        if progress:
            progress.clear()
        record = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": p, "train_crop": crop_of(epoch),
                  "train_loss": tr["loss"], "train_acc": tr["acc"], "train_seconds": time.time() - t0}
        for split, ds in eval_data.items():
            ev = trainer.evaluate(ds)
            record[f"{split}_loss"], record[f"{split}_acc"] = ev["loss"], ev["acc"]
        record["seconds"] = time.time() - t0
        record["steps"] = int(trainer.optimizer.iterations.numpy())
        if is_chief:
            _write_epoch_summaries(run, record, model, config, epoch + 1)
        run.append_metrics(record)
        run.save_checkpoint(trackables, {"epoch": epoch + 1, "step": record["steps"], "meta": meta,
                                         "python_rng": capture_python_rng(),
                                         "config": config.to_dict()}, step=epoch + 1)
        history.append(record)
        _log(log, _epoch_line(record, config.epochs, eval_splits))

    run.close()
    final = history[-1] if history else None
    summary = {"run_dir": run.path, "genotype": genotype.name, "epochs_done": final["epoch"] if final else 0,
               "epochs": config.epochs, "final": final, **counts,
               "trace_counts": dict(trainer.trace_counts)}
    if final is not None and final["epoch"] >= config.epochs and is_chief and export_dir:
        from tfnas.export import export_model
        paths = export_model(model, info, export_dir)
        summary.update(paths)
        _log(log, f"exported SavedModel to {paths['saved_model']} and {paths['keras_file']}")
    return summary


def _genotype_from_dict(d):
    from tfnas.genotypes import Genotype
    return Genotype.from_dict(d, name=d.get("name"))


def _epoch_line(r, epochs, splits) -> str:
    parts = [f"epoch {r['epoch']:>3}/{epochs}", f"lr {r['lr']:.5f}",
             f"train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%"
             + (f" ({r['train_crop']}-px crops)" if r.get("train_crop") else "")]
    for s in splits:
        parts.append(f"{s} loss {r[f'{s}_loss']:.4f} acc {100 * r[f'{s}_acc']:.2f}%")
    parts.append(f"{r['seconds']:.1f}s")
    return " | ".join(parts)


def _write_static_summaries(run, genotype, config, counts, info) -> None:
    import tensorflow as tf
    writer = run.tensorboard_writer()
    with writer.as_default():
        tf.summary.text("genotype", tf.constant(f"`{genotype.to_repr()}`"), step=0)
        tf.summary.text("config", tf.constant("```\n" + json.dumps(config.to_dict(), indent=2) + "\n```"), step=0)
        tf.summary.text("parameters", tf.constant(
            f"{counts['params']:,} without the auxiliary head; auxiliary head {counts['params_auxiliary']:,}"),
            step=0)
        try:
            from tfnas import diagrams
            for kind in ("normal", "reduce"):
                png = diagrams.cell_figure_png_bytes(genotype.cell(kind))
                image = tf.image.decode_png(png, channels=4)[None]
                tf.summary.image(f"cells/{kind}", image, step=0)
        except Exception:  # diagrams are a nicety; never fail a run for them
            pass
    writer.flush()


def _write_epoch_summaries(run, record, model, config, epoch) -> None:
    import tensorflow as tf
    writer = run.tensorboard_writer()
    with writer.as_default():
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                group = "train" if key.startswith("train") else key.split("_")[0] if "_" in key else "run"
                tf.summary.scalar(f"{group}/{key}", value, step=epoch)
        if config.histogram_every and (epoch % config.histogram_every == 0 or epoch == config.epochs
                                       or epoch == 1):
            for var in model.trainable_variables:
                tf.summary.histogram(f"weights/{var.path}", _tf_variable(var), step=epoch)
    writer.flush()
