"""One network skeleton for every tfnas network, and the evaluation network.

:class:`CellNetwork` is the skeleton of :mod:`tfnas.plan` as a Keras model:
stem (3×3 conv + BN), the cells of the plan, an optional auxiliary head,
global average pooling and the classifier.  A subclass says only how its
cells are made, built and called:

- :class:`NetworkCIFAR` (DARTS ``NetworkCIFAR``): evaluation cells of a
  genotype, drop path, the auxiliary head;
- :class:`tfnas.search.supernet.SearchNetwork`: the DARTS supernet;
- the ENAS child network (``tfnas.search.enas_child``).

:func:`build_network` builds the evaluation network a run's
:class:`tfnas.config.NetworkSpec` describes.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfnas.cells import Cell
from tfnas.ops import BatchNorm, check_kernels, conv_initializer, pad_symmetric
from tfnas.plan import STEM_MULTIPLIER, STEMS, genotype_plan, parameter_counts  # noqa: F401
from tfnas.resolve import genotype_from_config, resolve_genotype

__all__ = ["AuxiliaryHeadCIFAR", "CellNetwork", "NetworkCIFAR", "STEMS", "count_parameters",
           "parameter_counts", "dense_classifier", "float32_logits", "build_network"]

_register = keras.saving.register_keras_serializable(package="tfnas")


def float32_logits(logits):
    """Logits in float32: under mixed precision the loss and softmax must not
    run in float16 (a no-op for float32, and float64 stays float64)."""
    return tf.cast(logits, tf.float32) if logits.dtype in (tf.float16, tf.bfloat16) else logits


def dense_classifier(units, fan_in, dtype=None, name="classifier", use_bias=True):
    """A linear layer with PyTorch ``nn.Linear``'s initialisation:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(units, kernel_initializer=conv_initializer(), use_bias=use_bias,
                              bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                              dtype=dtype, name=name)


@_register
class AuxiliaryHeadCIFAR(keras.layers.Layer):
    """On an 8x8 input: ReLU, 5x5 avg pool stride 3 (-> 2x2), 1x1 conv 128,
    BN, ReLU, 2x2 conv 768, BN, ReLU, linear."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        dt = self.dtype_policy
        self.conv_1 = keras.layers.Conv2D(128, 1, use_bias=False, kernel_initializer=conv_initializer(),
                                          dtype=dt, name="conv_1")
        self.bn_1 = BatchNorm(dtype=dt, name="bn_1")
        self.conv_2 = keras.layers.Conv2D(768, 2, use_bias=False, kernel_initializer=conv_initializer(),
                                          dtype=dt, name="conv_2")
        self.bn_2 = BatchNorm(dtype=dt, name="bn_2")
        self.classifier = dense_classifier(self.num_classes, 768, dt, "classifier")

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
        return float32_logits(self.classifier(tf.reshape(x, [-1, 768])))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


class CellNetwork(keras.Model):
    """The skeleton (see the module docstring).  Subclasses implement
    :meth:`make_cell`, :meth:`build_cell` and :meth:`call_cell`, and may
    override :meth:`make_auxiliary_head`, :meth:`make_classifier`,
    :meth:`classify`, and :meth:`advance` / :meth:`advance_shapes` (which
    tensors the next cell reads; the ENAS child's reduction cells differ).

    Layers are created in the order stem, cells, auxiliary head, classifier
    (checkpoints list variables in that order).  ``kernels`` is the
    :mod:`tfnas.kernels` setting subclasses give their cells' operations;
    under a mixed dtype policy the logits are float32."""

    def __init__(self, init_channels, layers, num_classes, plan, stem="cifar", stem_bn_fused=None,
                 kernels="auto", **kwargs):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")
        self.kernels = check_kernels(kernels)
        self.init_channels, self.num_layers = int(init_channels), int(layers)
        self.num_classes, self.stem_kind = int(num_classes), stem
        self.plan = plan
        dt = self.dtype_policy
        stride = STEMS[stem]
        self.stem_conv = keras.layers.Conv2D(
            plan.stem_channels, 3, strides=stride, padding="same" if stride == 1 else "valid",
            use_bias=False, kernel_initializer=conv_initializer(), dtype=dt, name="stem_conv")
        self.stem_bn = BatchNorm(affine=True, fused=stem_bn_fused, dtype=dt, name="stem_bn")
        self.cells = [self.make_cell(slot) for slot in plan.cells]
        self.auxiliary_head = self.make_auxiliary_head()
        self.classifier = self.make_classifier()

    # -- what a subclass says ---------------------------------------------------------
    def make_cell(self, slot):
        raise NotImplementedError

    def build_cell(self, cell, s0_shape, s1_shape):
        """Build ``cell`` for its two input shapes; return its output shape."""
        raise NotImplementedError

    def call_cell(self, cell, s0, s1, training, context):
        """Run ``cell``; ``context`` is what :meth:`cell_context` prepared for this call."""
        raise NotImplementedError

    def cell_context(self, training):
        """Per-call values the cells share (alpha softmaxes, drop-path probability)."""
        return None

    def make_auxiliary_head(self):
        return None

    def make_classifier(self):
        return dense_classifier(self.num_classes, self.plan.final_channels, self.dtype_policy,
                                "classifier")

    def classify(self, features, training):
        """Logits from the last cell's output: global average pooling, linear."""
        return float32_logits(self.classifier(tf.reduce_mean(features, axis=[1, 2])))

    # -- the skeleton -----------------------------------------------------------------
    def _stem_input_shape(self, shape):
        if STEMS[self.stem_kind] == 1:
            return shape
        b, h, w, c = shape
        return (b, None if h is None else h + 2, None if w is None else w + 2, c)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} expects NHWC inputs with known channels, "
                             f"got shape {input_shape}")
        shape = self._stem_input_shape(input_shape)
        self.stem_conv.build(shape)
        shape = self.stem_conv.compute_output_shape(shape)
        self.stem_bn.build(shape)
        s0 = s1 = shape
        for i, cell in enumerate(self.cells):
            s0, s1 = self.advance_shapes(cell, s0, s1)
            if i == self.plan.aux_index and self.auxiliary_head is not None:
                self.auxiliary_head.build(s1)
        self.classifier.build((input_shape[0], s1[-1]))
        self.built = True

    def build_for(self, image_shape=(32, 32, 3)):
        """Create every variable from shapes (no forward pass); returns the model."""
        self.build((None, *image_shape))
        return self

    def stem(self, x, training):
        if STEMS[self.stem_kind] != 1:
            x = pad_symmetric(x, 1)
        return self.stem_bn(self.stem_conv(x), training=training)

    def advance(self, cell, s0, s1, training, context):
        """The next cell's two inputs after running ``cell``: by default the
        cell's input ``s1`` and its output."""
        return s1, self.call_cell(cell, s0, s1, training, context)

    def advance_shapes(self, cell, s0_shape, s1_shape):
        """:meth:`advance` on shapes, building ``cell``."""
        return s1_shape, self.build_cell(cell, s0_shape, s1_shape)

    def features(self, x, training, with_aux=False, context=None):
        """The last cell's output and the auxiliary logits (None unless asked
        for, in training, with a head).  ``context``: what the cells share
        in this call (default :meth:`cell_context`)."""
        if not self.built:
            self.build(tuple(x.shape))
        if context is None:
            context = self.cell_context(training)
        s0 = s1 = self.stem(x, training)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = self.advance(cell, s0, s1, training, context)
            if i == self.plan.aux_index and with_aux and training and self.auxiliary_head is not None:
                aux = self.auxiliary_head(s1, training=training)
        return s1, aux

    def call(self, inputs, training=False):
        return self.classify(self.features(inputs, training)[0], training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)


def _as_genotype(genotype):
    if isinstance(genotype, dict):
        return genotype_from_config(genotype)
    if isinstance(genotype, str):
        return resolve_genotype(genotype)
    if hasattr(genotype, "cell"):
        return genotype
    raise TypeError(f"genotype must be a Genotype, dict or string, got {type(genotype).__name__}")


@_register
class NetworkCIFAR(CellNetwork):
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
        genotype = _as_genotype(genotype)
        if int(layers) < 3 or int(init_channels) < 1 or int(num_classes) < 1:
            raise ValueError(f"need layers >= 3, init_channels >= 1, num_classes >= 1 "
                             f"(got {layers}, {init_channels}, {num_classes})")
        self.genotype = genotype
        self.auxiliary = bool(auxiliary)
        self.drop_path = bool(drop_path)
        super().__init__(init_channels, layers, num_classes,
                         genotype_plan(genotype, int(init_channels), int(layers)), stem=stem, **kwargs)
        self.aux_index = self.plan.aux_index
        self.drop_path_prob = self.add_weight(shape=(), name="drop_path_prob", dtype="float32", trainable=False,
                                              initializer=keras.initializers.Constant(float(drop_path_prob)))

    def make_cell(self, slot):
        kind = "reduce" if slot.reduction else "normal"
        return Cell(self.genotype.cell(kind), slot.channels, slot.reduction, slot.reduction_prev,
                    kernels=self.kernels, dtype=self.dtype_policy, name=f"cell{slot.index}_{kind}")

    def build_cell(self, cell, s0_shape, s1_shape):
        cell.build([s0_shape, s1_shape])
        return cell.compute_output_shape([s0_shape, s1_shape])

    def cell_context(self, training):
        return self.drop_path_prob.value if training and self.drop_path else None

    def call_cell(self, cell, s0, s1, training, context):
        return cell([s0, s1], drop_prob=context, training=training)

    def make_auxiliary_head(self):
        if not self.auxiliary:
            return None
        return AuxiliaryHeadCIFAR(self.num_classes, dtype=self.dtype_policy, name="auxiliary_head")

    def call_with_aux(self, inputs, training=False):
        """``(logits, aux_logits or None)``; aux only with ``auxiliary`` and in training."""
        inputs = tf.cast(inputs, self.compute_dtype)
        features, aux = self.features(inputs, bool(training), with_aux=True)
        return self.classify(features, training), aux

    def get_config(self):
        return {**super().get_config(), "genotype": {**self.genotype.to_dict(), "name": self.genotype.name},
                "init_channels": self.init_channels, "layers": self.num_layers,
                "num_classes": self.num_classes, "auxiliary": self.auxiliary, "stem": self.stem_kind,
                "drop_path": self.drop_path, "drop_path_prob": float(self.drop_path_prob.numpy()),
                "kernels": self.kernels}

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


def build_network(spec) -> NetworkCIFAR:
    """The built evaluation network of a :class:`tfnas.config.NetworkSpec`
    (mixed precision: Keras' ``mixed_float16`` dtype policy)."""
    model = NetworkCIFAR(genotype_from_config(spec.genotype), init_channels=spec.init_channels,
                         layers=spec.layers, num_classes=spec.num_classes, auxiliary=spec.auxiliary,
                         stem=spec.stem, kernels=spec.kernels,
                         dtype="mixed_float16" if spec.mixed_precision else None)
    return model.build_for(tuple(spec.image_shape))
