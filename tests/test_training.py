"""tfnas.training: reference optimizer, schedule, compiled steps (on a toy model)."""

import collections
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnas import training
from tfnas.cells import DropPath


class ToyNet(keras.Model):
    """The NetworkCIFAR calling convention on a model that traces in a second."""

    def __init__(self, num_classes=10, auxiliary=False, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
        self.bn = keras.layers.BatchNormalization()
        self.drop = DropPath(seed=1)
        self.head = keras.layers.Dense(num_classes)
        self.aux_head = keras.layers.Dense(num_classes) if auxiliary else None
        self.drop_path_prob = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                              name="drop_path_prob")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(input_shape[:-1] + (8,))
        self.head.build((None, 8))
        if self.aux_head is not None:
            self.aux_head.build((None, 8))
        self.built = True

    def call_with_aux(self, x, training=False):
        h = tf.nn.relu(self.bn(self.conv(x), training=training))
        h = self.drop(h, self.drop_path_prob.value if training else None, training=training)
        pooled = tf.reduce_mean(h, axis=[1, 2])
        aux = self.aux_head(pooled) if (self.aux_head is not None and training) else None
        return self.head(pooled), aux

    def call(self, x, training=False):
        return self.call_with_aux(x, training)[0]


def _toy(auxiliary=False, seed=0):
    keras.utils.set_random_seed(seed)
    model = ToyNet(auxiliary=auxiliary)
    model.build((None, 8, 8, 3))
    return model


def _batches(n=50, batch=16, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 8, 8, 3).astype(np.float32)
    y = rng.randint(0, 10, n).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), x, y


def test_default_config_is_the_small_preset():
    from tfnas.training import PRESETS, TrainConfig
    assert TrainConfig() == TrainConfig.from_preset("small")
    assert TrainConfig().drop_path_prob == PRESETS["small"]["drop_path_prob"]


def test_cosine_schedule_per_epoch():
    assert training.cosine_learning_rate(0, 10, 0.025) == pytest.approx(0.025)
    assert training.cosine_learning_rate(5, 10, 0.025) == pytest.approx(0.0125)
    assert training.cosine_learning_rate(10, 10, 0.025) == pytest.approx(0.0, abs=1e-12)
    assert training.cosine_learning_rate(5, 10, 0.025, 0.001) == pytest.approx(0.013)


def test_clip_like_torch():
    grads = [tf.constant([3.0, 4.0]), tf.constant([0.0])]          # norm 5
    clipped, norm = training.clip_by_global_norm_like_torch(grads, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped[0].numpy(), [3 / (5 + 1e-6), 4 / (5 + 1e-6)], rtol=1e-6)
    same, _ = training.clip_by_global_norm_like_torch(grads, 10.0)
    np.testing.assert_array_equal(same[0].numpy(), [3.0, 4.0])


def test_reference_sgd_is_pytorch_sgd_with_coupled_l2():
    w = tf.Variable([1.0, -2.0])
    opt = training.ReferenceSGD(0.1, momentum=0.9, weight_decay=0.01)
    opt.build([w])
    ref_w, buf = np.array([1.0, -2.0]), np.zeros(2)
    for lr, g in [(0.1, [0.5, 0.5]), (0.05, [-1.0, 2.0]), (0.01, [0.3, 0.0])]:
        opt.learning_rate.assign(lr)
        opt.apply([tf.constant(g)], [w])
        d = np.array(g) + 0.01 * ref_w          # L2 in the gradient, before momentum
        buf = 0.9 * buf + d
        ref_w = ref_w - lr * buf                 # current lr times the buffer
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6)
    assert int(opt.iterations.numpy()) == 3



def test_reference_sgd_traces_no_per_variable_constants_or_learning_rate_reads():
    # The search step updates ~1,400 tensors: per variable, only the update
    # kernel, its weight-decay term and the gradient may be in the graph.
    def op_types(count, apply_if):
        ws = [tf.Variable(tf.ones((3,))) for _ in range(count)]
        opt = training.ReferenceSGD(0.1, momentum=0.9, weight_decay=0.01)
        opt.build(ws)
        spec = [tf.TensorSpec((3,), tf.float32)] * count
        graph = tf.function(lambda gs: opt.apply(gs, ws, apply_if=apply_if)).get_concrete_function(spec).graph
        return collections.Counter(op.type for op in graph.get_operations())

    for apply_if in (None, tf.constant(True)):
        few, many = op_types(2, apply_if), op_types(6, apply_if)
        assert many["ResourceApplyMomentum"] == 6
        assert many["Const"] == few["Const"], (few, many)
        assert many["ReadVariableOp"] - few["ReadVariableOp"] == 4, (few, many)   # λ·w only


def test_train_step_matches_a_manual_step():
    model = _toy(auxiliary=True)
    strategy = tf.distribute.get_strategy()
    trainer = training.Trainer(model, strategy, lr=0.1, momentum=0.9, weight_decay=3e-4,
                               grad_clip=0.5, auxiliary_weight=0.4)
    ds, x, y = _batches(n=16, batch=16)
    before = [v.numpy().copy() for v in model.trainable_variables]
    # manual: CE + 0.4 CE_aux, torch clip at 0.5, L2 3e-4, momentum from zero
    with tf.GradientTape() as tape:
        logits, aux = model.call_with_aux(x, training=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        ce_aux = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=aux)
        loss = tf.reduce_mean(ce + 0.4 * ce_aux)
    grads = tape.gradient(loss, model.trainable_variables)
    grads, _ = training.clip_by_global_norm_like_torch(grads, 0.5)
    expect = [w - 0.1 * (g.numpy() + 3e-4 * w) for w, g in zip(before, grads)]
    result = trainer.train_epoch(ds)
    assert result["loss"] == pytest.approx(float(loss), rel=1e-5)
    for v, e in zip(model.trainable_variables, expect):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-4, atol=1e-6)


def test_compiled_once_per_run_and_learns():
    model = _toy()
    trainer = training.Trainer(model, tf.distribute.get_strategy(), lr=0.05)
    ds, _, _ = _batches(n=50, batch=16)       # last batch is partial (2 examples)
    losses = []
    for epoch in range(6):
        lr, p = trainer.set_epoch(epoch, 6, 0.05, 0.0, 0.2)
        assert p == pytest.approx(0.2 * epoch / 6)
        assert float(trainer.optimizer.learning_rate.numpy()) == pytest.approx(lr)
        losses.append(trainer.train_epoch(ds)["loss"])
        ev = trainer.evaluate(ds)
        assert ev["examples"] == 50
    assert trainer.trace_counts == {"train": 1, "eval": 1}
    assert losses[-1] < losses[0]
    assert int(trainer.optimizer.iterations.numpy()) == 6 * 4


def test_one_compiled_step_pair_per_image_size():
    model = _toy()
    trainer = training.Trainer(model, tf.distribute.get_strategy(), lr=0.05)
    full, x, y = _batches(n=32, batch=16)
    cropped = tf.data.Dataset.from_tensor_slices((x[:, 1:7, 1:7], y)).batch(16)
    for ds in (cropped, cropped, full, full):
        trainer.train_epoch(ds)
    assert trainer.evaluate(full)["examples"] == 32
    assert trainer.trace_counts == {"train": 2, "eval": 1}
    assert trainer.compiled(cropped.element_spec) is not trainer.compiled(full.element_spec)
    assert int(trainer.optimizer.iterations.numpy()) == 8


def test_nan_loss_raises_diverged():
    model = _toy()
    trainer = training.Trainer(model, tf.distribute.get_strategy(), lr=0.05)
    ds, x, y = _batches(n=32, batch=16)
    bad = tf.data.Dataset.from_tensor_slices((np.full_like(x, np.nan), y)).batch(16)
    with pytest.raises(training.TrainingDivergedError, match="loss is nan"):
        trainer.train_epoch(bad)


def test_presets_and_config():
    paper = training.TrainConfig.from_preset("paper")
    assert (paper.init_channels, paper.layers, paper.epochs, paper.batch_size) == (36, 20, 600, 96)
    assert paper.auxiliary and paper.cutout == 16 and paper.drop_path_prob == 0.2
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.grad_clip) == (0.025, 0.9, 3e-4, 5.0)
    study = training.TrainConfig.from_preset("study")
    assert not study.auxiliary and study.cutout == 0 and study.drop_path_prob == 0
    # the authors' variant scripts: batch 80 (not DARTS's 96)
    assert (study.init_channels, study.layers, study.epochs, study.batch_size) == (36, 20, 600, 80)
    study_small = training.TrainConfig.from_preset("study-small")
    assert study_small.batch_size == 80 and not study_small.auxiliary and study_small.drop_path_prob == 0
    assert study_small.cutout == 0 and study_small.init_channels < 16
    small = training.TrainConfig.from_preset("small", epochs=3, lr=None)
    assert small.epochs == 3 and small.lr == 0.025 and small.init_channels == 16
    with pytest.raises(training.TrainingConfigError, match="unknown preset"):
        training.TrainConfig.from_preset("huge")
    with pytest.raises(training.TrainingConfigError, match="drop_path_prob"):
        training.TrainConfig.from_preset("small", drop_path_prob=1.5).validate()
    with pytest.raises(training.TrainingConfigError, match="go together"):
        training.TrainConfig.from_preset("small", early_crop=24, early_crop_epochs=0).validate()
    with pytest.raises(training.TrainingConfigError, match="early_crop"):
        training.TrainConfig.from_preset("small", early_crop=-1, early_crop_epochs=2).validate()
    again = training.TrainConfig.from_dict(small.to_dict())
    assert again == small and not math.isnan(again.lr)
    with pytest.raises(training.TrainingConfigError, match="kernels must be one of auto, cpu, standard"):
        training.TrainConfig(kernels="gpu").validate()


def test_kernel_and_precision_flags_reach_the_network_spec():
    from tfnas.cli.train import _config_from_args, build_parser
    from tfnas.data import DatasetInfo
    config, _ = _config_from_args(build_parser().parse_args(
        ["--genotype", "DARTS_V2", "--kernels", "standard", "--mixed-precision"]))
    info = DatasetInfo("x", 10, (32, 32, 3), {}, (0.5,) * 3, (0.25,) * 3)
    spec = config.network_spec(info)
    assert (spec.kernels, spec.mixed_precision) == ("standard", True)
    default, _ = _config_from_args(build_parser().parse_args(["--genotype", "DARTS_V2"]))
    assert (default.kernels, default.mixed_precision) == ("auto", False)


# -- mixed precision --------------------------------------------------------------------

def test_reference_sgd_skips_a_step_when_told():
    w = tf.Variable([1.0, -2.0])
    opt = training.ReferenceSGD(0.1, momentum=0.9, weight_decay=0.01)
    opt.build([w])
    opt.apply([tf.constant([0.5, 0.5])], [w])
    after_one = (w.numpy().copy(), opt.buffers[0].numpy().copy())
    opt.apply([tf.constant([np.inf, np.nan])], [w], apply_if=tf.constant(False))
    np.testing.assert_array_equal(w.numpy(), after_one[0])
    np.testing.assert_array_equal(opt.buffers[0].numpy(), after_one[1])
    opt.apply([tf.constant([0.5, 0.5])], [w], apply_if=tf.constant(True))
    assert not np.array_equal(w.numpy(), after_one[0])


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    scale = training.DynamicLossScale(initial_scale=8.0, growth_steps=2)
    grads, finite = scale.unscaled([tf.constant([8.0, 16.0])])
    np.testing.assert_array_equal(grads[0].numpy(), [1.0, 2.0])
    assert bool(finite)
    _, finite = scale.unscaled([tf.constant([np.inf])])
    assert not bool(finite)
    scale.update(tf.constant(False))
    assert float(scale.scale.numpy()) == 4.0
    for expected in (4.0, 8.0):
        scale.update(tf.constant(True))
        assert float(scale.scale.numpy()) == expected


@pytest.mark.slow
def test_mixed_precision_network_trains_a_step_in_float16_with_float32_bn_logits_and_loss():
    from tfnas.config import NetworkSpec
    from tfnas.genotypes import zoo_genotype
    from tfnas.networks import build_network
    from tfnas.ops import BatchNorm, batch_norm_layers
    genotype = zoo_genotype("DARTS_V2")
    keras.utils.set_random_seed(0)
    spec = NetworkSpec({**genotype.to_dict(), "name": "DARTS_V2"}, 4, 3, 10, (32, 32, 3),
                       auxiliary=True, mixed_precision=True)   # the head needs 8x8 after two reductions
    model = build_network(spec)
    assert model.compute_dtype == "float16" and model.cells[0].compute_dtype == "float16"
    assert {v.dtype for v in model.variables if "float" in v.dtype} == {"float32"}
    bns = batch_norm_layers(model)
    assert bns and all(bn.moving_mean.dtype == "float32" for bn in bns)
    # BN normalises half-precision inputs with float32 statistics
    x16 = tf.cast(tf.random.stateless_normal((2, 4, 4, 3), (0, 1)) * 300.0 + 1000.0, tf.float16)
    for fused in (None, False):
        bn = BatchNorm(fused=fused, dtype="mixed_float16")
        y = bn(x16, training=True)
        assert y.dtype == tf.float16 and np.all(np.isfinite(y.numpy()))
        np.testing.assert_allclose(tf.reduce_mean(tf.cast(y, tf.float32), [0, 1, 2]).numpy(), 0, atol=1e-2)
    rng = np.random.RandomState(0)
    x, y = rng.randn(8, 32, 32, 3).astype(np.float32), rng.randint(0, 10, 8).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    logits, aux = model.call_with_aux(x, training=True)
    assert logits.dtype == tf.float32 and aux.dtype == tf.float32
    assert model(x, training=False).dtype == tf.float32
    trainer = training.Trainer(model, tf.distribute.get_strategy(), lr=0.05, loss_scale=True)
    assert "loss_scale" in trainer.trackables()
    before = [v.numpy().copy() for v in model.trainable_variables]
    result = trainer.train_epoch(ds)
    assert math.isfinite(result["loss"])
    # a step that overflows is skipped and halves the scale; then the weights move
    assert float(trainer.loss_scale.scale.numpy()) in (2.0 ** 14, 2.0 ** 15)
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(model.trainable_variables, before))
