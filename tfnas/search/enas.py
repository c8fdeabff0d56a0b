"""ENAS (Pham et al., ICML 2018), micro search, on the search-method seam.

Per epoch, as the reference (facts and tfnas's choices in ``ENAS.md`` and
``docs/search.md``):

1. **the shared child** (:class:`~tfnas.search.enas_child.EnasChild`)
   trains on the training split without its validation part: each
   mini-batch an architecture is sampled from the controller and one SGD
   step (Nesterov momentum 0.9, L2 1e-4·Σw², gradient clip 5 by global norm)
   trains the weights it uses; the learning rate follows a cosine with warm
   restarts per epoch (0.05 → 0.0005, T0 = 10, Tmul = 2).  The architecture
   enters the compiled step as a tensor: one trace for the whole run;
2. **the controller** (:class:`~tfnas.search.enas_controller.EnasController`)
   takes ``controller_updates`` REINFORCE updates, each averaging
   ``samples_per_update`` sampled architectures whose reward is the child's
   accuracy on one validation mini-batch (BN in training mode, as the
   reference) plus the entropy bonus;
3. **derivation**: ``derive_samples`` architectures are sampled and scored
   on validation batches; the best is the epoch's genotype.

The width and depth of every architecture the child trained on are
recorded per epoch (the search's topology drift): summary statistics in
``metrics.jsonl``, histograms in TensorBoard.

:class:`SharedChildSearch` holds everything but the sampler and its
training; :mod:`tfnas.search.random_search` reuses it with uniform sampling.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfnas.metrics import batch_sums, cross_entropy, MeanMetrics
from tfnas.search.base import SearchMethod
from tfnas.search.enas_child import EnasChild
from tfnas.search.enas_controller import (EnasController, Reinforce, ReinforceConfig,
                                          arch_to_genotype, resolve_sampling_space)
from tfnas.topology import cell_depth, cell_width
from tfnas.training import ReferenceSGD, replica_gradients

__all__ = ["cosine_restart_learning_rate", "SharedChildSearch", "EnasSearch", "topology_stats"]


def cosine_restart_learning_rate(epoch: int, lr_max: float, lr_min: float, period: int,
                                 multiplier: int) -> float:
    """Cosine annealing with warm restarts, per epoch (0-based): cycles of
    ``period``, ``period·multiplier``, ... epochs, each from ``lr_max`` to
    ``lr_min`` (the reference: restarts after epochs 10, 30, 70 of 150)."""
    start, length = 0, int(period)
    while epoch >= start + length:
        start, length = start + length, length * int(multiplier)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * (epoch - start) / length))


def topology_stats(archs, space, prefix: str = "sampled") -> dict:
    """Mean, standard deviation, minimum and maximum of the normal and
    reduction cells' width and depth over architectures ``(n, 2, 4N)``."""
    values = {f"{kind}_{what}": [] for kind in ("normal", "reduce") for what in ("width", "depth")}
    for arch in archs:
        genotype = arch_to_genotype(arch, space)
        for kind in ("normal", "reduce"):
            cell = genotype.cell(kind)
            values[f"{kind}_width"].append(cell_width(cell))
            values[f"{kind}_depth"].append(cell_depth(cell))
    stats = {}
    for key, seq in values.items():
        a = np.asarray(seq, dtype=np.float64)
        stats.update({f"{prefix}_{key}_mean": float(a.mean()), f"{prefix}_{key}_std": float(a.std()),
                      f"{prefix}_{key}_min": float(a.min()), f"{prefix}_{key}_max": float(a.max())})
    return stats, values


class SharedChildSearch(SearchMethod):
    """A search over one weight-shared child that samples an architecture
    per mini-batch; subclasses give the ``sampler`` (``sample()``,
    ``sample_many(n)``, ``trackables()``) and may train it
    (:meth:`train_sampler`)."""

    data_splits = ("train", "validation")
    default_validation = 0.1

    def __init__(self, settings, info, strategy):
        super().__init__(settings, info, strategy)
        self.space = resolve_sampling_space(settings.space)
        cfg = self.config
        self.child = EnasChild(self.space, settings.init_channels, settings.layers, info.num_classes,
                               dropout=cfg.dropout, kernels=cfg.kernels).build_for(tuple(info.image_shape))
        # L2 of l2_reg·Σw² in the loss is 2·l2_reg·w in the gradient.
        self.optimizer = ReferenceSGD(cfg.learning_rate, cfg.momentum, 2 * cfg.l2_reg, nesterov=True)
        self.optimizer.build(self.child.trainable_variables)
        self.trace_counts = {"child_step": 0, "child_accuracy": 0}
        arch_spec = tf.TensorSpec(self.child.arch_shape, tf.int32)
        self._arch_spec = arch_spec
        self._step_fn = None
        self._accuracy_fn = None
        self.sampled = []          # architectures of the current epoch's child steps
        self.derived = {}

    # -- the compiled child ----------------------------------------------------------
    def _child_step(self, batch, arch):
        self.trace_counts["child_step"] += 1     # Python side effect: trace time only
        strategy, cfg = self.strategy, self.config
        variables = self.child.trainable_variables

        def replica(x, y, arch):
            with tf.GradientTape() as tape:
                logits = self.child((x, arch), training=True)
                per_example = cross_entropy(y, logits)
                loss = tf.nn.compute_average_loss(per_example)
            grads = replica_gradients(tape, loss, variables)
            clipped, norm = tf.clip_by_global_norm(grads, cfg.grad_clip)
            self.optimizer.apply(grads if cfg.reference_unclipped else clipped, variables)
            return batch_sums(y, logits, per_example), norm

        x, y = batch
        sums, norm = strategy.run(replica, args=(x, y, arch))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None))

    def _child_accuracy(self, batch, arch):
        """Accuracy of the child with ``arch`` on one batch (BN in training
        mode, as the reference's rewards; no weight update)."""
        self.trace_counts["child_accuracy"] += 1
        x, y = batch
        sums = self.strategy.run(lambda x, y, a: batch_sums(y, self.child((x, a), training=True)),
                                 args=(x, y, arch))
        sums = self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
        return sums[1] / sums[2]

    def _compile(self):
        spec = self.train_stream.element_spec
        self._step_fn = tf.function(self._child_step, input_signature=[spec, self._arch_spec],
                                    autograph=False)
        val_spec = self.reward_stream.element_spec
        self._accuracy_fn = tf.function(self._child_accuracy, input_signature=[val_spec, self._arch_spec],
                                        autograph=False)

    def accuracy(self, batch, arch) -> tf.Tensor:
        return self._accuracy_fn(batch, tf.convert_to_tensor(arch, tf.int32))

    # -- the seam ---------------------------------------------------------------------
    def trackables(self) -> dict:
        return {"model": self.child, "weight_optimizer": self.optimizer.trackable,
                **self.sampler_trackables()}

    def sampler_trackables(self) -> dict:
        return self.sampler.trackables()

    def open_streams(self, data) -> None:
        s = self.settings
        steps = data.batches_per_epoch("train")
        if s.steps_per_epoch:
            steps = min(steps, s.steps_per_epoch)
        if steps == 0:
            raise ValueError(f"dataset {s.dataset} gives no training batch of {s.batch_size}")
        self.steps_per_epoch = steps
        self.train_stream = data.stream("train", steps)
        available = data.batches_per_epoch("validation")
        if available == 0:
            raise ValueError(f"the validation split of {s.dataset} gives no batch of {s.batch_size}; "
                             f"raise --validation or lower --batch-size")
        # Rewards read fresh validation batches (whole passes per epoch, so
        # a resumed run reads what the uninterrupted one did); derivation a
        # fixed shuffled set.  No augmentation for either.
        rewards = self.config_reward_batches()
        self.reward_passes = max(1, -(-rewards // available))
        self.reward_stream = data.stream("validation", available, seed_offset=1, augment=False,
                                         passes_per_epoch=self.reward_passes)
        self.derive_passes = -(-self.config.derive_samples // available)
        self.derive_stream = data.stream("validation", available, seed_offset=2, augment=False,
                                         fixed_epoch=0, drop_remainder=True)
        self._compile()

    def set_epoch(self, epoch: int) -> float:
        cfg = self.config
        lr = cosine_restart_learning_rate(epoch, cfg.learning_rate, cfg.learning_rate_min,
                                          cfg.restart_period, cfg.restart_multiplier)
        self.optimizer.learning_rate.assign(lr)
        return lr

    def train_child(self, progress) -> dict:
        metrics, norms, self.sampled = MeanMetrics(), 0.0, []
        if progress is not None:
            progress.total = self.steps_per_epoch
        for batch in self.train_stream.next_pass():
            arch, _, _ = self.sampler.sample()
            sums, norm = self._step_fn(batch, arch)
            metrics.add(sums)
            norms += float(norm)
            self.sampled.append(arch.numpy())
            if progress is not None and progress.wants_update():
                result = metrics.result()
                progress.update(metrics.batches, f"loss {result['loss']:.3f} acc {100 * result['acc']:.1f}%")
        result = metrics.result()
        return {"loss": result["loss"], "acc": result["acc"], "steps": metrics.batches,
                "grad_norm": norms / max(metrics.batches, 1)}

    def train_sampler(self) -> dict:
        """Train the sampler after the child's epoch; returns metrics."""
        return {}

    def run_epoch(self, epoch: int, progress) -> dict:
        lr = self.set_epoch(epoch)
        record = {"lr": lr, **self.train_child(progress), **self.train_sampler()}
        stats, _ = topology_stats(self.sampled, self.space)
        return {**record, **stats}

    def config_reward_batches(self) -> int:
        """Validation batches the sampler's training reads per epoch."""
        return 0

    def reward(self, arch) -> tf.Tensor:
        """The child's accuracy with ``arch`` on the next validation batch."""
        return self.accuracy(next(self._reward_batches), arch)

    def derive(self):
        """Sample ``derive_samples`` architectures, score each on one
        validation batch (in turn), keep the most accurate."""
        archs, _, _ = self.sampler.sample_many(self.config.derive_samples)
        batches = _passes(self.derive_stream, self.derive_passes)
        scores = np.asarray([float(self.accuracy(next(batches), arch)) for arch in tf.unstack(archs)])
        for _ in batches:   # the rest of the pass: every derivation reads the same batches
            pass
        best = int(np.argmax(scores))
        self.derived = {"derive_best_acc": float(scores[best]), "derive_mean_acc": float(scores.mean()),
                        "derive_samples": int(len(scores)), "arch": archs[best].numpy().tolist()}
        return arch_to_genotype(archs[best].numpy(), self.space)

    def epoch_extras(self) -> dict:
        return dict(self.derived)

    def epoch_line(self, r: dict) -> str:
        return (f"lr {r['lr']:.4f}  child loss {r['loss']:.3f} acc {100 * r['acc']:.1f}%  "
                f"derived: best of {r['derive_samples']} {100 * r['derive_best_acc']:.1f}% "
                f"(mean {100 * r['derive_mean_acc']:.1f}%)  sampled normal width "
                f"{r['sampled_normal_width_mean']:.2f}c depth {r['sampled_normal_depth_mean']:.2f}")

    def write_summaries(self, record: dict, step: int) -> None:
        if not self.config.sampled_histograms or not self.sampled:
            return
        _, values = topology_stats(self.sampled, self.space)
        for key, seq in values.items():
            tf.summary.histogram(f"sampled/{key}", np.asarray(seq, dtype=np.float32))

    def describe(self) -> str:
        s = self.settings
        weights = int(sum(int(np.prod(v.shape)) for v in self.child.trainable_variables))
        return (f"{type(self).__name__} ({len(self.space.operations)} operations, {self.space.num_nodes} nodes"
                f"): C={s.init_channels}, {s.layers} layers, {weights:,} shared weights")

    def sizes(self) -> dict:
        return {"weights": int(sum(int(np.prod(v.shape)) for v in self.child.trainable_variables)),
                "weight_tensors": len(self.child.trainable_variables),
                "arch_shape": list(self.child.arch_shape)}


def _passes(stream, count: int):
    """The batches of the next ``count`` passes of ``stream``."""
    for _ in range(count):
        yield from stream.next_pass()


class EnasSearch(SharedChildSearch):
    """ENAS: the controller samples; REINFORCE trains it on the child's
    validation accuracy."""

    def __init__(self, settings, info, strategy):
        super().__init__(settings, info, strategy)
        cfg = self.config
        self.sampler = EnasController(self.space, lstm_size=cfg.lstm_size, tanh_constant=cfg.tanh_constant,
                                      op_tanh_reduce=cfg.op_tanh_reduce, seed=settings.seed)
        self.reinforce = Reinforce(self.sampler, ReinforceConfig(
            learning_rate=cfg.controller_learning_rate, beta_1=cfg.controller_beta_1,
            epsilon=cfg.controller_epsilon, entropy_weight=cfg.entropy_weight,
            baseline_decay=cfg.baseline_decay, samples_per_update=cfg.samples_per_update))

    def sampler_trackables(self) -> dict:
        return self.reinforce.trackables()

    def config_reward_batches(self) -> int:
        return self.config.controller_updates * self.config.samples_per_update

    def train_sampler(self) -> dict:
        sums = {}
        self._reward_batches = _passes(self.reward_stream, self.reward_passes)
        for _ in range(self.config.controller_updates):
            stats = self.reinforce.update(self.reward)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
        for _ in self._reward_batches:   # drain the epoch's passes (resume alignment)
            pass
        n = max(self.config.controller_updates, 1)
        return {f"controller_{k}": v / n for k, v in sums.items()}

    def epoch_line(self, r: dict) -> str:
        line = super().epoch_line(r)
        if "controller_reward" in r:
            line += f"  controller reward {100 * r['controller_reward']:.1f}%"
        return line

    def sizes(self) -> dict:
        return {**super().sizes(),
                "controller_weights": int(sum(int(np.prod(v.shape)) for v in self.sampler.trainable_variables))}


METHOD = EnasSearch
