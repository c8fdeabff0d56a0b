"""The evaluation network (DARTS ``NetworkCIFAR``) and parameter counts."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfnas import genotypes as _genotypes
from tfnas.cells import Cell, cell_parameter_count
from tfnas.ops import BatchNorm, _conv_init, _pad

__all__ = ["AuxiliaryHeadCIFAR", "NetworkCIFAR", "STEMS", "count_parameters", "parameter_counts", "cell_plan"]

_register = keras.saving.register_keras_serializable(package="tfnas")

STEM_MULTIPLIER = 3
# "cifar": 3x3 conv stride 1 (32x32 inputs).  "imagenet64": the same conv at
# stride 2 with symmetric padding 1, so 64x64 inputs reach the cells at 32x32
# and the rest of the network (reductions, 8x8 auxiliary input) is unchanged;
# same parameter count as "cifar".
STEMS = {"cifar": 1, "imagenet64": 2}


def _dense(units, fan_in, dtype, name):
    # PyTorch nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(units, kernel_initializer=_conv_init(),
                              bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                              dtype=dtype, name=name)


def cell_plan(genotype, init_channels, layers):
    """Per cell ``(C_prev_prev, C_prev, C, reduction, reduction_prev)``, plus
    the channels entering the auxiliary head and the classifier."""
    c_curr = STEM_MULTIPLIER * init_channels
    c_pp, c_p, c_curr = c_curr, c_curr, init_channels
    plan, reduction_prev, c_aux = [], False, None
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        plan.append((c_pp, c_p, c_curr, reduction, reduction_prev))
        multiplier = len((genotype.reduce_concat if reduction else genotype.normal_concat))
        reduction_prev = reduction
        c_pp, c_p = c_p, multiplier * c_curr
        if i == 2 * layers // 3:
            c_aux = c_p
    return plan, c_aux, c_p


@_register
class AuxiliaryHeadCIFAR(keras.layers.Layer):
    """On an 8x8 input: ReLU, 5x5 avg pool stride 3 (-> 2x2), 1x1 conv 128,
    BN, ReLU, 2x2 conv 768, BN, ReLU, linear."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        dt = self.dtype_policy
        self.conv_1 = keras.layers.Conv2D(128, 1, use_bias=False, kernel_initializer=_conv_init(), dtype=dt, name="conv_1")
        self.bn_1 = BatchNorm(dtype=dt, name="bn_1")
        self.conv_2 = keras.layers.Conv2D(768, 2, use_bias=False, kernel_initializer=_conv_init(), dtype=dt, name="conv_2")
        self.bn_2 = BatchNorm(dtype=dt, name="bn_2")
        self.classifier = _dense(self.num_classes, 768, dt, "classifier")

    def build(self, input_shape):
        b, h, w, c = input_shape
        shape = (b, None if h is None else (h - 5) // 3 + 1, None if w is None else (w - 5) // 3 + 1, c)
        for layer in (self.conv_1, self.bn_1, self.conv_2, self.bn_2):
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        flat = None if None in shape[1:] else shape[1] * shape[2] * shape[3]
        if flat is not None and flat != 768:
            raise ValueError(f"AuxiliaryHeadCIFAR expects an 8x8 input (got {h}x{w})")
        self.classifier.build((b, 768))

    def call(self, inputs, training=False):
        x = tf.nn.avg_pool2d(tf.nn.relu(inputs), 5, 3, "VALID")
        x = tf.nn.relu(self.bn_1(self.conv_1(x), training=training))
        x = tf.nn.relu(self.bn_2(self.conv_2(x), training=training))
        return self.classifier(tf.reshape(x, [-1, 768]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _as_genotype(genotype):
    if isinstance(genotype, _genotypes.Genotype):
        return genotype
    if isinstance(genotype, dict):
        return _genotypes.Genotype.from_dict(genotype, name=genotype.get("name"))
    if isinstance(genotype, str):
        return _genotypes.resolve_genotype(genotype)
    raise TypeError(f"genotype must be a Genotype, dict or string, got {type(genotype).__name__}")


@_register
class NetworkCIFAR(keras.Model):
    """DARTS evaluation network: stem, ``layers`` cells (reductions at
    ``layers//3`` and ``2*layers//3``), optional auxiliary head on the output
    of cell ``2*layers//3``, global average pooling, linear classifier.

    ``model(x, training=...)`` returns logits; ``call_with_aux`` returns
    ``(logits, aux_logits)`` where ``aux_logits`` is None unless
    ``auxiliary=True`` and ``training`` (as the reference).  Drop path uses
    the non-trainable variable ``drop_path_prob``; assign it per epoch (no
    retracing).  ``drop_path=False`` leaves the drop-path ops out of the
    graph altogether (faster; for runs whose drop-path probability stays 0,
    assigning the variable then has no effect).
    """

    def __init__(self, genotype, init_channels=36, layers=20, num_classes=10, auxiliary=False,
                 stem="cifar", drop_path_prob=0.0, drop_path=True, **kwargs):
        super().__init__(**kwargs)
        self.genotype = _as_genotype(genotype)
        self.init_channels, self.num_layers = int(init_channels), int(layers)
        self.num_classes, self.auxiliary = int(num_classes), bool(auxiliary)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")
        if self.num_layers < 3 or self.init_channels < 1 or self.num_classes < 1:
            raise ValueError(f"need layers >= 3, init_channels >= 1, num_classes >= 1 "
                             f"(got {layers}, {init_channels}, {num_classes})")
        self.stem_kind = stem
        self.drop_path = bool(drop_path)
        dt = self.dtype_policy
        c_stem = STEM_MULTIPLIER * self.init_channels
        stride = STEMS[stem]
        self.stem_conv = keras.layers.Conv2D(c_stem, 3, strides=stride, padding="same" if stride == 1 else "valid",
                                             use_bias=False, kernel_initializer=_conv_init(), dtype=dt,
                                             name="stem_conv")
        self.stem_bn = BatchNorm(dtype=dt, name="stem_bn")
        plan, c_aux, c_final = cell_plan(self.genotype, self.init_channels, self.num_layers)
        self.cells = []
        for i, (_, _, c, reduction, reduction_prev) in enumerate(plan):
            kind = self.genotype.cell("reduce" if reduction else "normal")
            self.cells.append(Cell(kind, c, reduction, reduction_prev, dtype=dt,
                                   name=f"cell{i}_{'reduce' if reduction else 'normal'}"))
        self.aux_index = 2 * self.num_layers // 3
        self.auxiliary_head = AuxiliaryHeadCIFAR(self.num_classes, dtype=dt, name="auxiliary_head") \
            if self.auxiliary else None
        self.classifier = _dense(self.num_classes, c_final, dt, "classifier")
        self.drop_path_prob = self.add_weight(shape=(), name="drop_path_prob", dtype="float32", trainable=False,
                                              initializer=keras.initializers.Constant(float(drop_path_prob)))

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"NetworkCIFAR expects NHWC inputs with known channels, got shape {input_shape}")
        shape = self._stem_padded(input_shape)
        self.stem_conv.build(shape)
        shape = self.stem_conv.compute_output_shape(shape)
        self.stem_bn.build(shape)
        s0 = s1 = shape
        for i, cell in enumerate(self.cells):
            cell.build([s0, s1])
            s0, s1 = s1, cell.compute_output_shape([s0, s1])
            if i == self.aux_index and self.auxiliary_head is not None:
                self.auxiliary_head.build(s1)
        self.classifier.build((input_shape[0], s1[-1]))
        self.built = True

    def _stem_padded(self, shape):
        if STEMS[self.stem_kind] == 1:
            return shape
        b, h, w, c = shape
        return (b, None if h is None else h + 2, None if w is None else w + 2, c)

    def _forward(self, inputs, training, with_aux):
        if not self.built:
            self.build(tuple(inputs.shape))
        x = inputs
        if STEMS[self.stem_kind] != 1:
            x = _pad(x, 1)
        s0 = s1 = self.stem_bn(self.stem_conv(x), training=training)
        drop_prob = self.drop_path_prob.value if training and self.drop_path else None
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell([s0, s1], drop_prob=drop_prob, training=training)
            if i == self.aux_index and with_aux and training and self.auxiliary_head is not None:
                aux = self.auxiliary_head(s1, training=training)
        logits = self.classifier(tf.reduce_mean(s1, axis=[1, 2]))
        return logits, aux

    def call(self, inputs, training=False):
        return self._forward(inputs, training, with_aux=False)[0]

    def call_with_aux(self, inputs, training=False):
        """``(logits, aux_logits or None)``; aux only with ``auxiliary`` and in training."""
        inputs = tf.cast(inputs, self.compute_dtype)
        return self._forward(inputs, bool(training), with_aux=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "genotype": {**self.genotype.to_dict(), "name": self.genotype.name},
                "init_channels": self.init_channels, "layers": self.num_layers,
                "num_classes": self.num_classes, "auxiliary": self.auxiliary, "stem": self.stem_kind, "drop_path": self.drop_path,
                "drop_path_prob": float(self.drop_path_prob.numpy())}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _auxiliary_weights(model):
    head = getattr(model, "auxiliary_head", None)
    return [] if head is None else head.trainable_weights


def count_parameters(model, auxiliary=False) -> int:
    """Trainable parameters of a :class:`NetworkCIFAR` (built on a 32x32 or
    64x64 input first if needed); the auxiliary head only with
    ``auxiliary=True``.  The reference's "param size" excludes it."""
    if not model.built:
        size = 64 if getattr(model, "stem_kind", "cifar") == "imagenet64" else 32
        model.build((None, size, size, 3))
    aux_ids = {id(v) for v in _auxiliary_weights(model)}
    return int(sum(math.prod(v.shape) for v in model.trainable_weights
                   if auxiliary or id(v) not in aux_ids))


def parameter_counts(genotype, init_channels=36, layers=20, num_classes=10) -> dict:
    """``{"params": without the auxiliary head, "params_auxiliary": the head
    alone}`` computed analytically (no model is built; tested against
    :func:`count_parameters` of built models)."""
    genotype = _as_genotype(genotype)
    plan, c_aux, c_final = cell_plan(genotype, init_channels, layers)
    c_stem = STEM_MULTIPLIER * init_channels
    total = 3 * 3 * 3 * c_stem + 2 * c_stem
    for c_pp, c_p, c, reduction, reduction_prev in plan:
        cell = genotype.cell("reduce" if reduction else "normal")
        total += cell_parameter_count(cell, c_pp, c_p, c, reduction, reduction_prev)
    total += c_final * num_classes + num_classes
    aux = c_aux * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * num_classes + num_classes
    return {"params": int(total), "params_auxiliary": int(aux)}
