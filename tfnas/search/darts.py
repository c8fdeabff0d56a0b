"""DARTS bilevel search: the alpha step and the weight step, first and second order.

Per mini-batch pair (a batch of the weight half and one of the alpha half):

1. **alpha step** -- the architecture parameters (alphas) follow the gradient
   of the alpha-half loss:
   - ``order=1``: ``∇α L_val(w, α)`` at the current weights;
   - ``order=2``: the unrolled gradient ``∇α L_val(w', α)`` with one virtual
     SGD step ``w' = w − ξ·(μ·buf + ∇w L_train(w, α) + λ·w)`` (momentum
     buffer, weight decay; ξ is the current learning rate), either with the
     reference's finite-difference Hessian-vector product (``hessian="fd"``)
     or by differentiating through the virtual step (``hessian="exact"``);
2. **weight step** -- the weights follow ``∇w L_train(w, α)`` (gradient-norm
   clip, then SGD with momentum and L2 weight decay, as the reference).

The search model is any Keras model with ``weight_variables`` and
``alpha_variables`` attributes (lists of variables) whose call returns logits.
Networks are evaluated at given weight values with
:class:`keras.StatelessScope`, which makes every pass side-effect free and
lets the same code run per replica under ``tf.distribute``: every state
update (optimizer slots, alphas, weights, BN statistics) is applied once, in
cross-replica context, from all-reduced values, so every replica holds the
same alphas.

Trace time and memory are kept small by tracing the network pass once
(``_pass``: loss, gradients wrt weights and alphas, BN-statistics writes) as
a nested ``tf.function`` and calling it for every pass; TensorFlow prunes
the outputs a call site does not use: from each inlined copy in the default
form, and by specialising the call per call site (grappler's function
optimisation) for a low-memory network, whose pass stays a call (measured:
without it the alpha step also computes the loops' filter gradients).
"""

from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf

from tfnas.metrics import MeanMetrics, batch_sums
from tfnas.ops import batch_statistics_frozen, deterministic_second_derivatives
from tfnas.search.base import SearchMethod
from tfnas.search.derive import derive_genotype
from tfnas.search.settings import HESSIAN_MODES, DartsConfig  # noqa: F401
from tfnas.search.supernet import SearchNetwork
# One place for the reference SGD semantics, the cosine schedule and the clip.
from tfnas.training import ReferenceSGD, clip_by_global_norm_like_torch, cosine_learning_rate

check_second_derivatives = DartsConfig.check_second_derivatives

def _as_dtype(value, dtype):
    # tf.cast of a Python float goes through float32; convert directly instead.
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype=dtype)
    return tf.cast(value, dtype)


def _slot(variable, name):
    return tf.Variable(tf.zeros(variable.shape, dtype=variable.dtype), trainable=False,
                       name=name)


class ReferenceAdam(tf.Module):
    """PyTorch Adam with L2 weight decay in the gradient (DARTS' alpha optimizer).

    Create under the strategy scope; call :meth:`apply` in cross-replica
    context with reduced gradients (every replica gets the same update)."""

    def __init__(self, variables, learning_rate, beta_1, beta_2, epsilon, weight_decay,
                 name="arch_optimizer"):
        super().__init__(name=name)
        self.learning_rate = float(learning_rate)
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon = float(epsilon)
        self.weight_decay = float(weight_decay)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.m = [_slot(v, f"m_{i}") for i, v in enumerate(variables)]
        self.v = [_slot(v, f"v_{i}") for i, v in enumerate(variables)]

    def apply(self, grads, variables):
        step = self.iterations.assign_add(1)
        for var, m, v, g in zip(variables, self.m, self.v, grads):
            t = tf.cast(step, var.dtype)
            g = g + self.weight_decay * var
            m_new = self.beta_1 * m + (1 - self.beta_1) * g
            v_new = self.beta_2 * v + (1 - self.beta_2) * tf.square(g)
            m.assign(m_new)
            v.assign(v_new)
            m_hat = m_new / (1 - tf.pow(_as_dtype(self.beta_1, var.dtype), t))
            v_hat = v_new / (1 - tf.pow(_as_dtype(self.beta_2, var.dtype), t))
            var.assign_sub(self.learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon))


def _zeros_for_none(grads, values):
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, values)]


def _all_reduce_mean(values):
    """Mean over replicas inside ``strategy.run`` (identity without a strategy)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, values)


class BilevelSearch:
    """The DARTS bilevel optimisation of one search model.

    ``model`` must be built and expose ``weight_variables`` and
    ``alpha_variables``.  ``strategy`` defaults to the current
    ``tf.distribute`` strategy; create the model under its scope first.
    """

    def __init__(self, model, config: DartsConfig = DartsConfig(), strategy=None):
        self.model = model
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.weight_vars = list(model.weight_variables)
        self.alpha_vars = list(model.alpha_variables)
        # Non-trainable state written in training mode (BN statistics).
        alpha_ids = {id(v) for v in self.alpha_vars}
        self.state_vars = [v for v in model.non_trainable_variables
                           if "float" in str(v.dtype) and id(v) not in alpha_ids]
        with self.strategy.scope():
            self.weight_optimizer = ReferenceSGD(config.learning_rate, config.momentum,
                                                 config.weight_decay)
            self.weight_optimizer.build(self.weight_vars)
            # ξ of the virtual step is the current learning rate, as in the reference.
            self.learning_rate = self.weight_optimizer.learning_rate
            self.arch_optimizer = ReferenceAdam(
                self.alpha_vars, config.arch_learning_rate, config.arch_beta_1,
                config.arch_beta_2, config.arch_epsilon, config.arch_weight_decay)
        # One traced network pass, reused by every pass of every step.  With a
        # low-memory network it stays a function call instead of being inlined
        # at each call site: one copy of its graph instead of one per call
        # site, for a lower peak, at the cost of more work per pass (a call
        # computes every output; docs/benchmarks.md).
        attributes = {"_noinline": True} if getattr(model, "low_memory", False) else None
        self._pass = tf.function(self._pass_impl, reduce_retracing=True, autograph=False,
                                 experimental_attributes=attributes)
        self._step_fns = {}
        self._alpha_grad_fns = {}
        self._eval_fn = None

    # ---------------------------------------------------------------- passes
    def trackables(self) -> dict:
        """What a checkpoint must hold to resume the search exactly."""
        return {"model": self.model, "weight_optimizer": self.weight_optimizer.trackable,
                "arch_optimizer": self.arch_optimizer}

    def _forward(self, x, weights, alphas, training=True, with_state=True):
        """Logits at the given weight/alpha values (no side effects) and the
        state values (BN statistics) the pass would have written; with
        ``with_state=False`` the statistics are neither computed nor returned
        (a smaller graph to trace)."""
        mapping = list(zip(self.weight_vars, weights)) + list(zip(self.alpha_vars, alphas))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            if with_state:
                logits = self.model(x, training=training)
            else:
                with batch_statistics_frozen(self.model):
                    logits = self.model(x, training=training)
                return logits, []
        state = []
        for v in self.state_vars:
            new = scope.get_current_value(v)
            state.append(tf.convert_to_tensor(v) if new is None else new)
        return logits, state

    @staticmethod
    def _loss_acc(logits, labels):
        labels = tf.cast(labels, tf.int64)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), labels), loss.dtype))
        return loss, acc

    def _pass_impl(self, x, y, weights, alphas):
        """Loss, accuracy, gradients wrt weights and wrt alphas, and the state
        writes (BN statistics) of one training-mode pass.

        Traced once and called for every pass of every step: callers use only
        some outputs, and TensorFlow prunes the rest from each call (see the
        module docstring), so tracing once costs no step time and gives a
        smaller graph, a shorter first call and a lower peak than one trace
        per kind of pass (docs/benchmarks.md, DARTS search)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            tape.watch(alphas)
            logits, state = self._forward(x, weights, alphas)
            loss, acc = self._loss_acc(logits, y)
        targets = list(weights) + list(alphas)
        grads = _zeros_for_none(tape.gradient(loss, targets), targets)
        return loss, acc, grads[:len(weights)], grads[len(weights):], state

    def _values(self):
        return ([tf.convert_to_tensor(v) for v in self.weight_vars],
                [tf.convert_to_tensor(v) for v in self.alpha_vars])

    # ------------------------------------------------- alpha gradients (replica)
    def _alpha_grads_replica(self, xt, yt, xv, yv, order, hessian):
        """Alpha gradient of one replica (already all-reduced where the
        algorithm needs a global quantity), val loss and accuracy."""
        w, a = self._values()
        if order == 1:
            loss, acc, _, ga, _ = self._pass(xv, yv, w, a)
            return ga, loss, acc
        xi = tf.cast(self.learning_rate, w[0].dtype)
        cfg = self.config
        if hessian == "exact":
            return self._exact_unrolled(xt, yt, xv, yv, w, a, xi)
        # Virtual step w' = w - ξ(μ·buf + g + λw) with the global training gradient.
        _, _, g_train, _, _ = self._pass(xt, yt, w, a)
        g_train = _all_reduce_mean(g_train)
        w_virtual = [wi - xi * (cfg.momentum * buf + g + cfg.weight_decay * wi)
                     for wi, buf, g in zip(w, self.weight_optimizer.buffers, g_train)]
        loss, acc, v, ga, _ = self._pass(xv, yv, w_virtual, a)
        v, ga = _all_reduce_mean((v, ga))
        correction = self.finite_difference_hvp(xt, yt, w, a, v)
        ga = [g - xi * c for g, c in zip(ga, correction)]
        return ga, loss, acc

    def finite_difference_hvp(self, x, y, weights, alphas, vector):
        """The reference's ``(∇α L(w+εv) − ∇α L(w−εv)) / (2ε)``, ε = r/‖v‖:
        an approximation of ``∇²_{α,w} L · v``."""
        eps = self.config.fd_radius / tf.linalg.global_norm(vector)
        w_plus = [wi + tf.cast(eps, wi.dtype) * vi for wi, vi in zip(weights, vector)]
        _, _, _, g_plus, _ = self._pass(x, y, w_plus, alphas)
        # Run the two passes one after the other: in parallel they double peak memory.
        with tf.control_dependencies(g_plus):
            w_minus = [wi - tf.cast(eps, wi.dtype) * vi for wi, vi in zip(weights, vector)]
        _, _, _, g_minus, _ = self._pass(x, y, w_minus, alphas)
        g_plus, g_minus = _all_reduce_mean((g_plus, g_minus))
        return [(gp - gm) / tf.cast(2 * eps, gp.dtype) for gp, gm in zip(g_plus, g_minus)]

    def _exact_unrolled(self, xt, yt, xv, yv, w, a, xi):
        """∇α L_val(w'(α), α), differentiating through the virtual step."""
        check_second_derivatives(getattr(self.model, "low_memory", False))
        cfg = self.config
        with deterministic_second_derivatives(self.model), tf.GradientTape() as outer:
            outer.watch(a)
            with tf.GradientTape() as inner:
                inner.watch(w)
                logits, _ = self._forward(xt, w, a, with_state=False)
                loss_train, _ = self._loss_acc(logits, yt)
            g_train = _zeros_for_none(inner.gradient(loss_train, w), w)
            g_train = _all_reduce_mean(g_train)
            w_virtual = [wi - xi * (cfg.momentum * buf + g + cfg.weight_decay * wi)
                         for wi, buf, g in zip(w, self.weight_optimizer.buffers, g_train)]
            logits, _ = self._forward(xv, w_virtual, a, with_state=False)
            loss, acc = self._loss_acc(logits, yv)
        ga = _zeros_for_none(outer.gradient(loss, a), a)
        ga = _all_reduce_mean(ga)
        return ga, loss, acc

    def _weight_grads_replica(self, x, y):
        w, a = self._values()
        loss, acc, gw, _, state = self._pass(x, y, w, a)
        return gw, loss, acc, state

    # ------------------------------------------------------ cross-replica API
    def _run_mean(self, fn, *args):
        per_replica = self.strategy.run(fn, args=args)
        if self.strategy.num_replicas_in_sync == 1 and not isinstance(
                self.strategy, tf.distribute.MirroredStrategy):
            return per_replica
        return tf.nest.map_structure(
            lambda t: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, t, axis=None),
            per_replica)

    def _search_step_impl(self, train_batch, val_batch, order, hessian):
        cfg = self.config
        xt, yt = train_batch
        xv, yv = val_batch
        ga, val_loss, val_acc = self._run_mean(
            lambda a, b, c, d: self._alpha_grads_replica(a, b, c, d, order, hessian),
            xt, yt, xv, yv)
        self.arch_optimizer.apply(ga, self.alpha_vars)
        gw, loss, acc, state = self._run_mean(self._weight_grads_replica, xt, yt)
        gw, grad_norm = clip_by_global_norm_like_torch(gw, cfg.grad_clip)
        # training.ReferenceSGD applies from replica context (merge_call); the
        # gradients are already reduced, so every replica passes the same ones.
        self.strategy.run(lambda g: self.weight_optimizer.apply(g, self.weight_vars), args=(gw,))
        for var, value in zip(self.state_vars, state):
            var.assign(value)
        return {"loss": loss, "acc": acc, "alpha_loss": val_loss, "alpha_acc": val_acc,
                "grad_norm": grad_norm}

    def search_step(self, train_batch, val_batch):
        """One alpha step then one weight step; returns scalar metrics.
        Batches may be distributed values (``strategy.experimental_distribute_dataset``)."""
        key = (self.config.order, self.config.hessian)
        if key not in self._step_fns:
            # autograph off: no tensor-dependent Python control flow here, and
            # it would re-read (possibly edited) source files while tracing.
            self._step_fns[key] = tf.function(
                lambda tb, vb: self._search_step_impl(tb, vb, *key), autograph=False)
        return self._step_fns[key](train_batch, val_batch)

    def alpha_gradient(self, train_batch, val_batch, order=None, hessian=None):
        """The alpha gradient the next alpha step would use (no update), for
        tests and probes; runs on the default strategy."""
        order = self.config.order if order is None else order
        hessian = self.config.hessian if hessian is None else hessian
        key = (order, hessian)
        if key not in self._alpha_grad_fns:
            def fn(tb, vb):
                return self._alpha_grads_replica(tb[0], tb[1], vb[0], vb[1], order, hessian)[0]
            self._alpha_grad_fns[key] = tf.function(fn, autograph=False)
        return [g.numpy() for g in self._alpha_grad_fns[key](train_batch, val_batch)]

    def _eval_impl(self, x, y):
        def replica(x, y):
            return batch_sums(y, self.model(x, training=False))
        sums = self.strategy.run(replica, args=(x, y))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def evaluate(self, dataset):
        """Loss and accuracy in inference mode over the batches of
        ``dataset`` (any iterable of batches, e.g. a ``BatchStream`` pass),
        example-weighted (:class:`tfnas.metrics.MeanMetrics`)."""
        if self._eval_fn is None:
            self._eval_fn = tf.function(self._eval_impl, autograph=False)
        metrics = MeanMetrics()
        for x, y in dataset:
            metrics.add(self._eval_fn(x, y))
        return metrics.result()

    def set_epoch(self, epoch: int, epochs: int) -> float:
        """Set the cosine learning rate of this epoch (no retracing)."""
        lr = cosine_learning_rate(epoch, epochs, self.config.learning_rate,
                                  self.config.learning_rate_min)
        self.learning_rate.assign(lr)
        return lr


# --------------------------------------------------------------- the method

def build_search_network(settings, num_classes: int, image_shape) -> SearchNetwork:
    """The (built) supernet of DARTS ``settings``: second order with the
    exact hypergradient uses the differentiable BN path, ``low_memory`` the
    loop-and-recompute form, ``kernels`` the kernel policy's setting."""
    cfg = settings.config
    bn_fused = False if (cfg.order == 2 and cfg.hessian == "exact") else None
    model = SearchNetwork(settings.init_channels, settings.layers, num_classes,
                          space=settings.cell_space, bn_fused=bn_fused, low_memory=cfg.low_memory,
                          kernels=cfg.kernels)
    return model.build_for(tuple(image_shape))


def alpha_heatmap_png(weights, operations, title) -> bytes:
    """softmax(alpha) of one cell type as a heat map (edges x operations), PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1.2 + 0.55 * len(operations), 1.0 + 0.28 * len(weights)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(weights, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(operations)), operations, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(weights)), [f"edge {i}" for i in range(len(weights))], fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, facecolor="white")
    return buffer.getvalue()


class DartsSearch(SearchMethod):
    """DARTS (Liu et al., ICLR 2019) on the search-method seam: the supernet's
    weights train on one half of the training split, its alphas on the
    other; one alpha step per weight step (:class:`BilevelSearch`); the
    genotype is derived from the alphas by the DARTS rule."""

    data_splits = ("train_a", "train_b")

    def __init__(self, settings, info, strategy):
        super().__init__(settings, info, strategy)
        self.model = build_search_network(settings, info.num_classes, info.image_shape)
        self.search = BilevelSearch(self.model, self.config, strategy=strategy)

    def trackables(self) -> dict:
        return self.search.trackables()

    def describe(self) -> str:
        cfg, s = self.config, self.settings
        form = f"order {cfg.order}" + (f", {cfg.hessian}" if cfg.order == 2 else "") \
            + (", low memory" if cfg.low_memory else "")
        return (f"DARTS search ({form}): C={s.init_channels}, {s.layers} layers, "
                f"{self.model.count_weights():,} weights + {self.model.count_alphas()} alphas")

    def open_streams(self, data) -> None:
        s = self.settings
        # Both halves cut to the same count per epoch (the reference zips them).
        steps = min(data.batches_per_epoch(split) for split in self.data_splits)
        if s.steps_per_epoch:
            steps = min(steps, s.steps_per_epoch)
        if steps == 0:
            raise ValueError(f"dataset {s.dataset} gives no batch of {s.batch_size}")
        self.steps_per_epoch = steps
        self.weights_stream = data.stream("train_a", steps, seed_offset=0)
        self.alphas_stream = data.stream("train_b", steps, seed_offset=1)
        # A fixed shuffled order (epoch 0), repeated: folder datasets are stored
        # class by class, so the first batches of an unshuffled split would be one class.
        eval_batches = data.batches_per_epoch("train_b", drop_remainder=False)
        if s.eval_batches:
            eval_batches = min(eval_batches, s.eval_batches)
        self.eval_stream = data.stream("train_b", eval_batches, seed_offset=2, fixed_epoch=0,
                                       augment=False)

    def run_epoch(self, epoch: int, progress) -> dict:
        lr = self.search.set_epoch(epoch, self.settings.epochs)
        if progress is not None:
            progress.total = self.steps_per_epoch
        sums, steps = {}, 0
        for train_batch, val_batch in zip(self.weights_stream.next_pass(), self.alphas_stream.next_pass()):
            metrics = self.search.search_step(train_batch, val_batch)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            steps += 1
            if progress is not None and progress.wants_update():
                progress.update(steps, f"loss {sums['loss'] / steps:.3f} "
                                       f"alpha-split loss {sums['alpha_loss'] / steps:.3f}")
        evaluation = self.search.evaluate(self.eval_stream.next_pass())
        # Batches are equal-sized (drop_remainder), so the mean over steps is example-weighted.
        return {"lr": lr, "steps": steps, **{k: v / steps for k, v in sums.items()},
                "eval_alpha_loss": evaluation["loss"], "eval_alpha_acc": evaluation["acc"]}

    def derive(self):
        return derive_genotype(self.model.alphas_normal.numpy(), self.model.alphas_reduce.numpy(),
                               self.space)

    def epoch_extras(self) -> dict:
        softmaxed = self.model.softmax_alphas()
        return {"alphas": {k: np.round(v, 6).tolist() for k, v in softmaxed.items()},
                "alphas_raw": {"normal": self.model.alphas_normal.numpy().tolist(),
                               "reduce": self.model.alphas_reduce.numpy().tolist()}}

    def epoch_line(self, r: dict) -> str:
        return (f"lr {r['lr']:.4f}  train loss {r['loss']:.3f} acc {100 * r['acc']:.1f}%  "
                f"alpha-split loss {r['alpha_loss']:.3f} acc {100 * r['alpha_acc']:.1f}% "
                f"(eval {100 * r['eval_alpha_acc']:.1f}%)")

    def write_summaries(self, record: dict, step: int) -> None:
        for kind, weights in record["alphas"].items():
            png = alpha_heatmap_png(np.asarray(weights), self.space.operations,
                                    f"softmax(alpha) {kind}, epoch {step}")
            tf.summary.image(f"alphas_{kind}", tf.image.decode_png(png, channels=3)[None])

    def sizes(self) -> dict:
        return {"weights": self.model.count_weights(), "alphas": self.model.count_alphas(),
                "alpha_shape": list(self.model.alphas_normal.shape),
                "weight_tensors": len(self.model.weight_variables),
                "order": self.config.order, "hessian": self.config.hessian,
                "low_memory": self.config.low_memory}


METHOD = DartsSearch
