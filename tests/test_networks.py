"""NetworkCIFAR: parameter parity, every zoo genotype, heads, stems, saving."""

import warnings

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas import genotypes
from tfnas.resolve import get_genotype
from tfnas.networks import NetworkCIFAR, count_parameters, parameter_counts

DARTS_V2 = get_genotype("DARTS_V2")


def test_parameter_parity_analytic():
    # The reference prints "param size = 3.349342MB" (auxiliary head excluded).
    assert parameter_counts(DARTS_V2) == {"params": 3_349_342, "params_auxiliary": 476_426}
    assert parameter_counts("DARTS_V2", init_channels=36, layers=20, num_classes=10)["params"] == 3_349_342


@pytest.mark.slow
def test_parameter_parity_built_model():
    model = NetworkCIFAR(DARTS_V2, init_channels=36, layers=20, num_classes=10, auxiliary=True)
    without = count_parameters(model)
    assert without == 3_349_342
    assert count_parameters(model, auxiliary=True) - without == 476_426


@pytest.fixture(scope="module")
def images():
    return tf.constant(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))


@pytest.mark.parametrize("name", genotypes.zoo_names())
def test_every_zoo_genotype_builds_and_counts_match(name, images):
    genotype = get_genotype(name)
    model = NetworkCIFAR(genotype, init_channels=4, layers=3, num_classes=7, auxiliary=True)
    logits, aux = model.call_with_aux(images, training=True)
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    counts = parameter_counts(genotype, init_channels=4, layers=3, num_classes=7)
    assert count_parameters(model) == counts["params"]
    assert count_parameters(model, auxiliary=True) == counts["params"] + counts["params_auxiliary"]


@pytest.fixture(scope="module")
def small_model(images):
    model = NetworkCIFAR(DARTS_V2, init_channels=4, layers=5, num_classes=10, auxiliary=True)
    model.call_with_aux(images, training=True)  # moving statistics move away from 0/1
    return model


def test_call_returns_logits_and_call_with_aux_a_pair(small_model, images):
    assert isinstance(small_model(images), tf.Tensor)
    logits, aux = small_model.call_with_aux(images, training=False)
    assert aux is None  # auxiliary logits only in training, as the reference
    np.testing.assert_allclose(logits.numpy(), small_model(images, training=False).numpy(), atol=1e-6)
    plain = NetworkCIFAR(DARTS_V2, init_channels=4, layers=5)
    assert plain.call_with_aux(images, training=True)[1] is None


def test_reductions_and_aux_position(small_model):
    kinds = [cell.reduction for cell in small_model.cells]
    assert kinds == [False, True, False, True, False]  # 5//3 = 1, 2*5//3 = 3
    assert small_model.aux_index == 3
    assert [cell.reduction_prev for cell in small_model.cells] == [False, False, True, False, True]


def test_drop_path_variable_changes_without_retracing(images):
    model = NetworkCIFAR(DARTS_V2, init_channels=4, layers=3, drop_path_prob=0.0)
    traces = []

    @tf.function
    def step(x):
        traces.append(1)
        return model.call_with_aux(x, training=True)[0]

    x = tf.tile(images, [8, 1, 1, 1])
    model.build(x.shape)
    step(x)
    model.drop_path_prob.assign(0.7)
    a, b = step(x).numpy(), step(x).numpy()
    assert len(traces) == 1 and not np.allclose(a, b)
    assert not model.drop_path_prob.trainable
    off = NetworkCIFAR(DARTS_V2, init_channels=4, layers=3, drop_path_prob=0.7, drop_path=False)
    np.testing.assert_allclose(off(x, training=True).numpy(), off(x, training=True).numpy(), atol=1e-6)


def test_imagenet64_stem_halves_the_input():
    model = NetworkCIFAR(DARTS_V2, init_channels=4, layers=3, auxiliary=True, stem="imagenet64")
    x = tf.zeros([2, 64, 64, 3])
    logits, aux = model.call_with_aux(x, training=True)  # aux head checks it gets 8x8
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    assert model.stem_conv.compute_output_shape((2, 66, 66, 3))[1:3] == (32, 32)
    cifar = NetworkCIFAR(DARTS_V2, init_channels=4, layers=3, auxiliary=True)
    assert count_parameters(model, True) == count_parameters(cifar, True)


def test_float64_network():
    model = NetworkCIFAR(DARTS_V2, init_channels=4, layers=3, dtype="float64")
    y = model(tf.zeros([2, 32, 32, 3]), training=True)
    assert y.dtype == tf.float64
    assert all(v.dtype == "float64" for v in model.trainable_weights)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown stem"):
        NetworkCIFAR(DARTS_V2, stem="imagenet224")
    with pytest.raises(ValueError, match="layers >= 3"):
        NetworkCIFAR(DARTS_V2, layers=2)
    with pytest.raises(genotypes.GenotypeError):
        NetworkCIFAR("NOT_A_GENOTYPE")
    with pytest.raises(ValueError, match="NHWC"):
        NetworkCIFAR(DARTS_V2, init_channels=4, layers=3).build((32, 32, 3))


def test_keras_file_round_trip(small_model, images, tmp_path):
    path = tmp_path / "net.keras"
    small_model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    assert not [w for w in caught if "keras" in str(w.filename)], [str(w.message) for w in caught]
    assert isinstance(loaded, NetworkCIFAR) and loaded.genotype == DARTS_V2 and loaded.auxiliary
    np.testing.assert_allclose(loaded(images).numpy(), small_model(images).numpy(), atol=1e-5)
    assert count_parameters(loaded, True) == count_parameters(small_model, True)


def test_export_serving_signature(images, tmp_path):
    model = NetworkCIFAR(DARTS_V2, init_channels=4, layers=3)  # 3 cells: export traces the model
    expected = model(images).numpy()
    path = str(tmp_path / "saved")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    fn = served.signatures["serving_default"]
    (out,) = fn(images).values()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    (batch_of_five,) = fn(tf.tile(images[:1], [5, 1, 1, 1])).values()  # any batch size
    assert batch_of_five.shape == (5, 10)
