"""Loss landscapes: analytic values on a quadratic, filter normalisation, resume."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tfnas.probes import (ProbeError, direction_to, filter_axes, load_landscape, loss_landscape,
                          random_direction, snapshot)

F64 = "float64"


def mse(y, p):
    return tf.reduce_mean((p - y) ** 2, axis=-1)


@pytest.fixture(scope="module")
def quadratic():
    """L(w) = mean_i (x_i.w - y_i)^2, exactly quadratic in the kernel w."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,), dtype=F64),
                              keras.layers.Dense(2, use_bias=False, dtype=F64)])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    return model, data, x, y


def analytic(w, x, y, directions, points):
    return np.array([np.mean(np.sum((x @ (w + sum(c * d for c, d in zip(p, directions))) - y) ** 2, 1) / 2)
                     for p in points])


def test_1d_and_2d_match_analytic_values(quadratic):
    model, data, x, y = quadratic
    w = model.layers[0].kernel.numpy()
    rng = np.random.default_rng(5)
    d1, d2 = rng.standard_normal(w.shape), rng.standard_normal(w.shape)
    coords = np.linspace(-1, 1, 5)
    one = loss_landscape(model, mse, data, directions=[[d1]], coords=coords)
    np.testing.assert_allclose(one.loss, analytic(w, x, y, [d1], [(a,) for a in coords]), rtol=1e-12)
    assert one.dims == 1 and one.complete and np.isnan(one.accuracy).all()   # not a classifier
    two = loss_landscape(model, mse, data, directions=[[d1], d2.ravel()], coords=coords)
    expected = analytic(w, x, y, [d1, d2], [(a, b) for a in coords for b in coords]).reshape(5, 5)
    np.testing.assert_allclose(two.loss, expected, rtol=1e-12)
    # One trace each for the weight assignment and the evaluation, for all 25 points.
    assert two.meta["tracing_counts"]["move"] == 1 and two.meta["tracing_counts"]["evaluate"] == 1
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), w)     # weights restored
    # Known curvature: second differences along d1 equal d1' H d1 h^2.
    hessian = 2 * np.kron(x.T @ x / 30, np.eye(2)) / 2
    curvature = d1.ravel() @ hessian @ d1.ravel()
    h = coords[1] - coords[0]
    np.testing.assert_allclose(np.diff(one.loss, 2) / h ** 2, curvature, rtol=1e-9)


def test_filter_normalisation_matches_weight_filter_norms():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(name="net", layers=[
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        keras.layers.Conv2DTranspose(3, 2, name="up"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="fc"),
    ])
    variables = model.trainable_variables
    axes = dict(zip([v.path for v in variables], filter_axes(model, variables)))
    assert axes["net/conv/kernel"] == (3,) and axes["net/fc/kernel"] == (1,)
    assert axes["net/dw/kernel"] == (2, 3) and axes["net/up/kernel"] == (2,)
    assert axes["net/bn/gamma"] == ()
    direction = random_direction(model, seed=0)
    for v, d in zip(variables, direction):
        w = v.numpy().astype(np.float64)
        if w.ndim <= 1:
            assert not d.any()            # bias / BN directions are zero by default
            continue
        reduce = tuple(a for a in range(w.ndim) if a not in axes[v.path])
        np.testing.assert_allclose(np.sqrt((d ** 2).sum(reduce)), np.sqrt((w ** 2).sum(reduce)), rtol=1e-12)
    with_bias = random_direction(model, seed=0, ignore=None)
    gamma = [i for i, v in enumerate(variables) if v.path.endswith("gamma")][0]
    np.testing.assert_array_equal(with_bias[gamma], variables[gamma].numpy())
    again = random_direction(model, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(direction, again))     # seeded


def test_classifier_accuracy_gradient_variance_and_direction_to():
    keras.utils.set_random_seed(2)
    build = lambda: keras.Sequential([keras.Input((4,), dtype=F64),                    # noqa: E731
                                      keras.layers.Dense(3, dtype=F64)])
    model, other = build(), build()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    towards = direction_to(model, other)
    land = loss_landscape(model, loss_fn, data, directions=[towards], coords=[0.0, 1.0],
                          with_gradient_variance=True)
    for coord, net in ((0, model), (1, other)):
        logits = net(x).numpy()
        assert land.accuracy[coord] == np.mean(logits.argmax(1) == y)
        assert abs(land.loss[coord] - float(keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, dtype=F64)(y, logits))) < 1e-12
    assert np.all(land.gradient_variance["mean_norm_deviation"] > 0)
    with pytest.raises(ProbeError):
        loss_landscape(model, loss_fn, data, directions=[np.zeros(3)])


def test_resume_after_interruption(quadratic, tmp_path):
    model, data, _, _ = quadratic
    before = snapshot(model)
    path = tmp_path / "grid.npz"
    full = loss_landscape(model, mse, data, num_points=4, seed=3)
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loss_landscape(model, mse, data, num_points=4, seed=3, checkpoint=path, progress=interrupt)
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(model)))   # restored on Ctrl-C
    partial, directions = load_landscape(path)
    assert partial.done.sum() == 7 and len(directions) == 2
    resumed_calls = []
    resumed = loss_landscape(model, mse, data, num_points=4, seed=99, checkpoint=path, resume=True,
                             progress=lambda done, total: resumed_calls.append(done))
    assert resumed_calls == list(range(8, 17))           # only the missing points
    np.testing.assert_allclose(resumed.loss, full.loss, rtol=1e-14)   # directions came from the file
    with pytest.raises(ProbeError, match="different grid"):
        loss_landscape(model, mse, data, num_points=5, checkpoint=path, resume=True)
