"""Eigen-solvers, Hutchinson trace and SLQ density; HessianProbe on a small model."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tfnas.probes import (HessianProbe, ProbeError, hutchinson_trace, lanczos, power_iteration,
                          slq_density, snapshot)

F64 = "float64"


def symmetric_matrix(n=30, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([[10.0, -7.0, 5.0], rng.uniform(-2, 2, n - 3)])
    return (q * values) @ q.T, values


@pytest.mark.parametrize("solver", [power_iteration, lanczos])
def test_solvers_find_largest_magnitude_eigenvalues(solver):
    a, values = symmetric_matrix()
    result = solver(lambda v: a @ v, a.shape[0], top_n=3, max_iter=500, tol=1e-12, seed=1)
    np.testing.assert_allclose(result.eigenvalues, [10.0, -7.0, 5.0], rtol=1e-6)
    assert result.converged
    if result.eigenvectors is not None:
        for lam, vec in zip(result.eigenvalues, result.eigenvectors):
            assert np.linalg.norm(a @ vec - lam * vec) < 1e-5


def test_lanczos_needs_far_fewer_matvecs_than_power():
    a, _ = symmetric_matrix(200, seed=3)
    power = power_iteration(lambda v: a @ v, 200, max_iter=1000, tol=1e-8, seed=0)
    krylov = lanczos(lambda v: a @ v, 200, max_iter=200, tol=1e-8, seed=0)
    assert abs(krylov.eigenvalues[0] - 10.0) < 1e-6 and abs(power.eigenvalues[0] - 10.0) < 1e-6
    assert krylov.num_matvecs < power.num_matvecs


def test_hutchinson_and_density_on_a_matrix():
    a, values = symmetric_matrix(50, seed=2)
    estimate, se, samples = hutchinson_trace(lambda v: a @ v, 50, max_iter=200, tol=1e-9, seed=0)
    assert len(samples) == 200 and se > 0
    assert abs(estimate - values.sum()) < 3 * se
    density = slq_density(lambda v: a @ v, 50, num_runs=3, num_steps=50, seed=0)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, atol=1e-12)
    assert abs(np.trapezoid(density.density, density.grid) - 1.0) < 1e-6
    # Full Lanczos reproduces the spectrum: the nodes are the eigenvalues.
    np.testing.assert_allclose(np.sort(density.nodes[0]), np.sort(values), atol=1e-8)


def test_solver_argument_errors():
    a, _ = symmetric_matrix(5)
    with pytest.raises(ProbeError):
        power_iteration(lambda v: a @ v, 5, top_n=0)
    with pytest.raises(ProbeError):
        lanczos(lambda v: a @ v, 5, tol=0)


# -------------------------------------------------------- on a Keras model

@pytest.fixture(scope="module")
def model_case():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,), dtype=F64),
        keras.layers.Dense(5, activation="tanh", dtype=F64),
        keras.layers.BatchNormalization(dtype=F64),
        keras.layers.Dense(3, dtype=F64),
    ])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 4)), rng.integers(0, 3, 30)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(15)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # Exact Hessian: the HVP of every basis vector (the HVP itself is checked
    # against tf's jacobian in test_probes_hvp).
    exact = {}
    for training in (False, True):
        probe = HessianProbe(model, loss_fn, data, training=training)
        exact[training] = np.stack([probe.hvp(e) for e in np.eye(probe.dim)])
    return model, loss_fn, data, exact


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("training", [False, True])
def test_probe_top_eigenvalues(model_case, method, training):
    model, loss_fn, data, exact = model_case
    before = snapshot(model)
    hessian = exact[training]
    true = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    true = true[np.argsort(-np.abs(true))]
    probe = HessianProbe(model, loss_fn, data, training=training, seed=1)
    top_n = 2 if method == "lanczos" else 1   # power deflation is tested on matrices above
    values, vectors = probe.eigenvalues(top_n=top_n, max_iter=2000, tol=1e-12, method=method,
                                        return_vectors=True)
    assert isinstance(values, np.ndarray) and values.shape == (top_n,)
    np.testing.assert_allclose(values, true[:top_n], rtol=1e-6)
    for lam, vec in zip(values, vectors):
        assert np.linalg.norm(hessian @ vec - lam * vec) < 1e-3 * abs(lam)
    assert probe.loss.tracing_counts["hvp"] == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(model)))


def test_probe_trace_and_density(model_case):
    model, loss_fn, data, exact = model_case
    probe = HessianProbe(model, loss_fn, data, seed=3)
    estimate, se = probe.trace(max_iter=100, tol=1e-3)
    assert se > 0 and abs(estimate - np.trace(exact[False])) < 3 * se
    density = probe.density(num_runs=2, num_steps=20)
    assert abs(np.trapezoid(density.density, density.grid) - 1.0) < 1e-6
    assert density.grid.min() < np.linalg.eigvalsh(exact[False]).min()


def test_probe_rejects_bad_method(model_case):
    model, loss_fn, data, _ = model_case
    with pytest.raises(ProbeError):
        HessianProbe(model, loss_fn, data).eigenvalues(method="qr")
