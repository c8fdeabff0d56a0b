"""Gradient variance against a direct computation that stores every gradient."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tfnas.probes import ProbeError, gradient_variance, snapshot

F64 = "float64"


@pytest.fixture(scope="module")
def case():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(name="net", layers=[
        keras.Input((4,), dtype=F64),
        keras.layers.Dense(5, activation="relu", dtype=F64, name="first"),
        keras.layers.Dense(3, dtype=F64),
    ])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)), rng.integers(0, 3, 50)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return model, data


def direct(model, data):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    grads = []
    for x, y in data:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)]))
    grads = np.stack(grads)
    mean = grads.mean(axis=0)
    dev = grads - mean
    return grads, mean, dev


def test_matches_direct_computation(case):
    model, data = case
    before = snapshot(model)
    result = gradient_variance(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), data,
                               per_layer=True)
    grads, mean, dev = direct(model, data)
    norms = np.linalg.norm(dev, axis=1)
    assert result["num_batches"] == 7 and result["batch_size"] == 8 and result["num_examples"] == 50
    np.testing.assert_allclose(result["mean_norm_deviation"], norms.mean(), rtol=1e-12)
    np.testing.assert_allclose(result["mean_sq_deviation"], (norms ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(result["mean_gradient_norm"], np.linalg.norm(mean), rtol=1e-12)
    # Per layer: the first Dense owns the first 4*5+5 parameters.
    first = result["layers"]["net/first"]
    assert first["num_parameters"] == 25
    np.testing.assert_allclose(first["mean_sq_deviation"], (np.linalg.norm(dev[:, :25], axis=1) ** 2).mean(),
                               rtol=1e-12)
    total_sq = sum(layer["mean_sq_deviation"] for layer in result["layers"].values())
    np.testing.assert_allclose(total_sq, result["mean_sq_deviation"], rtol=1e-12)
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(model)))


def test_shuffled_dataset_is_refused(case):
    model, data = case
    shuffled = data.unbatch().shuffle(50, reshuffle_each_iteration=True).batch(8)
    with pytest.raises(ProbeError, match="different batches"):
        gradient_variance(model, lambda y, p: tf.nn.sparse_softmax_cross_entropy_with_logits(y, p), shuffled)
