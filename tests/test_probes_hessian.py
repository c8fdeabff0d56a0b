"""Eigen-solvers, trace estimators and SLQ density on explicit matrices;
HessianProbe against exact Hessians (a small MLP, a bilinear model with a
+-lambda extreme pair) and against SciPy's eigsh over the same HVP."""

import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
import keras

from tfnas.probes import (HessianProbe, ProbeError, ProbeWarning, extreme_eigenvalues, hutchinson_trace,
                          hutchpp_trace, lanczos, power_iteration, slq_density, snapshot)
from tfnas.probes.hessian import select

F64 = "float64"


def symmetric_matrix(n=30, seed=0, top=(10.0, -7.0, 5.0)):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([top, rng.uniform(-2, 2, n - len(top))])
    return (q * values) @ q.T, values


def plus_minus_matrix(n=200, seed=0):
    """Extremes 2.19 and -2.18 (nearly equal magnitude, opposite signs), then
    2.07 and -1.9, and a bulk near zero, like a Hessian at initialisation."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([[2.19, -2.18, 2.07, -1.9],
                             rng.uniform(-1, 1.5, n - 4) * np.exp(-np.arange(n - 4) / 30)])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * values) @ q.T, values


def true_residuals(a, values, vectors):
    return np.array([np.linalg.norm(a @ v - lam * v) / abs(lam) for lam, v in zip(values, vectors)])


# ------------------------------------------------------ explicit matrices

@pytest.mark.parametrize("solver", [power_iteration, lanczos])
def test_solvers_find_largest_magnitude_eigenvalues(solver):
    a, values = symmetric_matrix()
    result = solver(lambda v: a @ v, a.shape[0], top_n=3, max_iter=500, tol=1e-10, seed=1)
    np.testing.assert_allclose(result.eigenvalues, [10.0, -7.0, 5.0], rtol=1e-9)
    # Power iteration's later pairs carry the error of the vectors deflated before.
    assert np.all(result.residuals <= (1e-10 if solver is lanczos else 1e-9))
    assert result.converged == bool(np.all(result.residuals <= 1e-10))
    assert result.num_matvecs < (60 if solver is lanczos else 3 * 500)
    if result.eigenvectors is not None:
        assert np.all(true_residuals(a, result.eigenvalues, result.eigenvectors) < 1e-8)


@pytest.mark.parametrize("which", ["LM", "LA", "SA", "BE"])
def test_lanczos_which_matches_the_sorted_spectrum(which):
    a, values = symmetric_matrix(60, seed=4)
    result = lanczos(lambda v: a @ v, 60, top_n=3, max_iter=60, tol=1e-10, seed=0, which=which)
    expected = {"LM": values[np.argsort(-np.abs(values))][:3], "LA": np.sort(values)[::-1][:3],
                "SA": np.sort(values)[:3], "BE": np.sort(values)[[-1, -2, 0]]}[which]
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-9)
    assert result.converged and result.which == which
    np.testing.assert_array_equal(select([3.0, -5.0, 1.0, 4.0], "BE", 3), [3, 0, 1])


def test_reported_residuals_are_the_true_residuals():
    # Unconverged (few steps), so the residuals are far above round-off.
    a, _ = plus_minus_matrix()
    dim = a.shape[0]
    krylov = lanczos(lambda v: a @ v, dim, top_n=3, max_iter=8, tol=1e-3, seed=1, return_vectors=True)
    power = power_iteration(lambda v: a @ v, dim, top_n=2, max_iter=15, tol=1e-3, seed=1)
    for result in (krylov, power):
        assert not result.converged and np.all(result.residuals > 1e-3)
        np.testing.assert_allclose(result.residuals,
                                   true_residuals(a, result.eigenvalues, result.eigenvectors), rtol=1e-6)
        assert len(result.unconverged()) >= 1


def test_power_stalls_on_a_plus_minus_pair_where_lanczos_converges():
    a, values = plus_minus_matrix()
    dim = a.shape[0]
    power = power_iteration(lambda v: a @ v, dim, top_n=3, max_iter=60, tol=1e-3, seed=1)
    krylov = lanczos(lambda v: a @ v, dim, top_n=3, max_iter=80, tol=1e-3, seed=1)
    assert not power.converged and power.residuals[0] > 0.05
    assert krylov.converged and krylov.num_matvecs < power.num_matvecs
    np.testing.assert_allclose(krylov.eigenvalues, [2.19, -2.18, 2.07], rtol=1e-4)


def test_lanczos_needs_far_fewer_matvecs_than_power():
    a, _ = symmetric_matrix(200, seed=3)
    power = power_iteration(lambda v: a @ v, 200, max_iter=1000, tol=1e-8, seed=0)
    krylov = lanczos(lambda v: a @ v, 200, max_iter=200, tol=1e-8, seed=0)
    assert abs(krylov.eigenvalues[0] - 10.0) < 1e-6 and abs(power.eigenvalues[0] - 10.0) < 1e-6
    assert krylov.num_matvecs < power.num_matvecs


def test_extreme_eigenvalues_from_one_run():
    a, values = plus_minus_matrix()
    result = extreme_eigenvalues(lambda v: a @ v, a.shape[0], max_iter=100, tol=1e-6, seed=2,
                                 return_vectors=True)
    assert result.converged and result.num_hvps < 100
    assert abs(result.lambda_max - 2.19) < 1e-6 and abs(result.lambda_min + 2.18) < 1e-6
    assert abs(result.ratio - (-2.18 / 2.19)) < 1e-6
    np.testing.assert_allclose(
        [result.residuals["lambda_max"], result.residuals["lambda_min"]],
        true_residuals(a, [result.lambda_max, result.lambda_min], result.vectors), rtol=1e-4, atol=1e-12)
    row = json.loads(json.dumps(result.to_dict()))
    assert set(row) >= {"lambda_max", "lambda_min", "ratio", "residuals", "converged", "num_hvps"}
    assert row["converged"] is True and row["ratio"] == result.ratio
    short = extreme_eigenvalues(lambda v: a @ v, a.shape[0], max_iter=4, tol=1e-6, seed=2)
    assert not short.converged and json.loads(json.dumps(short.to_dict()))["converged"] is False
    assert [name for name, _, _ in short.unconverged()] == ["lambda_max", "lambda_min"]


def test_trace_estimators_on_matrices():
    a, values = plus_minus_matrix(120, seed=5)
    truth = values.sum()
    plain = hutchinson_trace(lambda v: a @ v, 120, max_iter=200, tol=1e-9, seed=0)
    assert plain.num_hvps == 200 and plain.standard_error > 0 and not plain.converged
    assert abs(plain.estimate - truth) < 3 * plain.standard_error
    estimate, se = plain                     # unpacks as before
    assert (estimate, se) == (plain.estimate, plain.standard_error)
    for sketch in ("lanczos", "random"):
        plus = hutchpp_trace(lambda v: a @ v, 120, max_iter=200, tol=1e-9, seed=0, sketch=sketch)
        assert plus.num_hvps <= 200 and plus.sketch_size == 66
        assert abs(plus.estimate - truth) < 3 * plus.standard_error
        # The sketch takes the large eigenvalues out of the sampled part.
        assert plus.standard_error < 0.5 * plain.standard_error
    # A sketch spanning the space is exact; a loose tolerance stops early.
    exact = hutchpp_trace(lambda v: a @ v, 120, max_iter=130, sketch_size=120, seed=0)
    assert exact.converged and exact.standard_error == 0 and abs(exact.estimate - truth) < 1e-9
    quick = hutchinson_trace(lambda v: a @ v, 120, max_iter=1000, tol=0.2, seed=0)
    assert quick.converged and 10 <= quick.num_hvps < 1000 and quick.relative_error <= 0.2


def test_density_on_a_matrix():
    a, values = symmetric_matrix(50, seed=2)
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
    with pytest.raises(ProbeError):
        lanczos(lambda v: a @ v, 5, which="XX")
    with pytest.raises(ProbeError):
        hutchpp_trace(lambda v: a @ v, 5, max_iter=10, sketch_size=9)
    with pytest.raises(ProbeError):
        hutchpp_trace(lambda v: a @ v, 5, sketch="qr")


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
    values, vectors = probe.eigenvalues(top_n=top_n, max_iter=2000, tol=1e-9, method=method,
                                        return_vectors=True)
    assert isinstance(values, np.ndarray) and values.shape == (top_n,)
    np.testing.assert_allclose(values, true[:top_n], rtol=1e-6)
    assert probe.last_result.converged
    for lam, vec in zip(values, vectors):
        assert np.linalg.norm(hessian @ vec - lam * vec) < 1e-6 * abs(lam)
    assert probe.loss.tracing_counts["hvp"] == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(model)))


def test_default_method_is_lanczos(model_case):
    model, loss_fn, data, _ = model_case
    default = HessianProbe(model, loss_fn, data, seed=5)
    named = HessianProbe(model, loss_fn, data, seed=5)
    np.testing.assert_array_equal(default.eigenvalues(top_n=2), named.eigenvalues(top_n=2, method="lanczos"))
    assert default.last_result.history == named.last_result.history
    assert default.last_result.which == "LM" and default.last_result.num_matvecs == default.num_hvps
    power = HessianProbe(model, loss_fn, data, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)    # its second pair may miss tol (deflation)
        power.eigenvalues(top_n=2, method="power")
    assert power.last_result.history != default.last_result.history
    with pytest.raises(ProbeError):
        default.eigenvalues(method="power", which="SA")


def test_trace_hutchinson_and_hutchpp_agree_with_the_exact_trace(model_case):
    model, loss_fn, data, exact = model_case
    truth = np.trace(exact[False])
    probe = HessianProbe(model, loss_fn, data, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)   # tol 1e-3 is out of reach: run the full budget
        plain = probe.trace(max_iter=60, tol=1e-3)
        plus = probe.trace(max_iter=60, tol=1e-3, method="hutch++", sketch_size=15)
    assert plain.num_hvps == plus.num_hvps == 60
    for result in (plain, plus):
        assert result.standard_error > 0 and abs(result.estimate - truth) < 3 * result.standard_error
    assert abs(plain.estimate - plus.estimate) < 3 * np.hypot(plain.standard_error, plus.standard_error)
    assert plus.standard_error < plain.standard_error


def test_trace_warns_when_its_standard_error_is_too_large(model_case):
    model, loss_fn, data, _ = model_case
    probe = HessianProbe(model, loss_fn, data, seed=3)
    with pytest.warns(ProbeWarning, match=r"trace not converged after 12 HVPs.*raise max_iter \(now 12\)"):
        result = probe.trace(max_iter=12, tol=1e-6)
    assert not result.converged and result.to_dict()["converged"] is False


def test_probe_density(model_case):
    model, loss_fn, data, exact = model_case
    probe = HessianProbe(model, loss_fn, data, seed=3)
    density = probe.density(num_runs=2, num_steps=20)
    assert abs(np.trapezoid(density.density, density.grid) - 1.0) < 1e-6
    assert density.grid.min() < np.linalg.eigvalsh(exact[False]).min()


def test_probe_rejects_bad_arguments(model_case):
    model, loss_fn, data, _ = model_case
    probe = HessianProbe(model, loss_fn, data)
    for kwargs in ({"method": "qr"}, {"which": "BE"}, {"which": "la"}):
        with pytest.raises(ProbeError):
            probe.eigenvalues(**kwargs)
    with pytest.raises(ProbeError):
        probe.trace(method="exact")


# ------------------------------------- a +-lambda pair with a known Hessian

DELTA = 0.02


def bilinear_case(d=4, n=32):
    """p = (x.u, (x.u)(x.v)); loss -y (x.u)(x.v) + DELTA/2 (x.u)^2.  Its
    Hessian in (u, v) is constant, [[DELTA C, -M], [-M, 0]] with C = mean x x^T
    and M = mean y x x^T: eigenvalue pairs +-mu of M, split by DELTA."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((d,), dtype=F64)
    a = keras.layers.Dense(1, use_bias=False, dtype=F64)(inputs)
    b = keras.layers.Dense(1, use_bias=False, dtype=F64)(inputs)
    ab = keras.layers.Multiply(dtype=F64)([a, b])
    model = keras.Model(inputs, keras.layers.Concatenate(dtype=F64)([ab, a]))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d)) * np.array([2.0, 1.0, 0.7, 0.5])
    y = rng.choice([-1.0, 1.0], n)
    c, m = x.T @ x / n, (x * y[:, None]).T @ x / n
    hessian = np.block([[DELTA * c, -m], [-m, np.zeros((d, d))]])

    def loss_fn(y_true, p):
        return -y_true * p[:, 0] + 0.5 * DELTA * p[:, 1] ** 2
    return model, loss_fn, (x, y), hessian


@pytest.fixture(params=["tf.function", "eager"])
def execution(request):
    tf.config.run_functions_eagerly(request.param == "eager")
    yield request.param
    tf.config.run_functions_eagerly(False)


def test_plus_minus_pair_lanczos_by_default_power_warns(execution):
    model, loss_fn, data, hessian = bilinear_case()
    values = np.linalg.eigvalsh(hessian)
    assert -1.0 < values[0] / values[-1] < -0.9            # the construction: a +-lambda pair
    probe = HessianProbe(model, loss_fn, data, seed=0)
    np.testing.assert_allclose(np.stack([probe.hvp(e) for e in np.eye(probe.dim)]), hessian, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbeWarning)      # the default converges: no warning
        top = probe.eigenvalues(top_n=2)
        extremes = probe.extremes()
    # Residuals <= tol = 1e-3 bound the error by 1e-3 relative; it is far smaller.
    np.testing.assert_allclose(top, values[np.argsort(-np.abs(values))][:2], rtol=1e-5)
    assert probe.last_result.converged and extremes.converged
    np.testing.assert_allclose([extremes.lambda_max, extremes.lambda_min], [values[-1], values[0]], rtol=1e-5)
    assert abs(extremes.ratio - values[0] / values[-1]) < 1e-5
    np.testing.assert_allclose(probe.eigenvalues(top_n=1, which="SA", tol=1e-9), values[:1], rtol=1e-12)
    with pytest.warns(ProbeWarning, match=r"eigenvalue \(LM\) -?\d.*residual .*raise max_iter \(now 30\)"):
        probe.eigenvalues(top_n=1, method="power", max_iter=30)
    assert not probe.last_result.converged and probe.last_result.residuals[0] > 1e-3


def test_small_max_iter_warns_for_both_ends():
    model, loss_fn, data, _ = bilinear_case(d=4)
    probe = HessianProbe(model, loss_fn, data, seed=0)
    with pytest.warns(ProbeWarning, match=r"extreme eigenvalue not converged after 2 HVPs: "
                                          r"lambda_max .*residual.*raise max_iter \(now 2\)"):
        result = probe.extremes(max_iter=2)
    assert not result.converged and result.to_dict()["converged"] is False
    assert all(r > 1e-3 for r in result.to_dict()["residuals"].values())


# ------------------------------------------------- against SciPy's eigsh

def eigsh_reference(probe, k, which):
    from scipy.sparse.linalg import LinearOperator, eigsh
    operator = LinearOperator((probe.dim, probe.dim), matvec=probe.hvp, dtype=np.float64)
    values = eigsh(operator, k=k, which=which, tol=1e-9, return_eigenvectors=False,
                   v0=np.random.default_rng(7).standard_normal(probe.dim))
    order = {"LM": np.argsort(-np.abs(values)), "LA": np.argsort(-values), "SA": np.argsort(values)}[which]
    return values[order]


def check_against_eigsh(probe, max_hvps=None):
    top = probe.eigenvalues(top_n=3)
    used = probe.last_result.num_matvecs
    assert probe.last_result.converged and (max_hvps is None or used <= max_hvps)
    np.testing.assert_allclose(top, eigsh_reference(probe, 3, "LM"), rtol=1e-3)
    extremes = probe.extremes()
    assert extremes.converged
    lambda_max, lambda_min = eigsh_reference(probe, 1, "LA")[0], eigsh_reference(probe, 1, "SA")[0]
    np.testing.assert_allclose([extremes.lambda_max, extremes.lambda_min], [lambda_max, lambda_min], rtol=1e-3)
    assert abs(extremes.ratio / (lambda_min / lambda_max) - 1) < 1e-3
    return extremes


def test_against_eigsh_on_a_keras_convnet():
    # A standard float32 Keras convnet of ~3,000 parameters at initialisation.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(16, 3, strides=2), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10),
    ])
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((32, 8, 8, 3)).astype("float32"), rng.integers(0, 10, 32))
    probe = HessianProbe(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), data)
    assert 2500 < probe.dim < 4000
    extremes = check_against_eigsh(probe, max_hvps=80)
    assert extremes.lambda_min < 0 < extremes.lambda_max          # indefinite, as at initialisation


@pytest.mark.slow
def test_against_eigsh_on_a_small_darts_network(cifar_mini):
    from tfnas import data as data_lib
    from tfnas.resolve import get_genotype
    from tfnas.networks import NetworkCIFAR
    from tfnas.probes import as_batches
    keras.utils.set_random_seed(0)
    model = NetworkCIFAR(get_genotype("DARTS_V2"), init_channels=4, layers=3, num_classes=10)
    model.build((None, 32, 32, 3))
    source = data_lib.open_dataset(f"folder:{cifar_mini}")
    batches = as_batches(source.dataset("test", 16, shuffle=False, epoch=0), max_batches=1)
    probe = HessianProbe(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), batches)
    assert 2000 < probe.dim < 4000
    check_against_eigsh(probe, max_hvps=80)
