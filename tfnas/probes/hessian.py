"""Hessian spectrum of a Keras model's loss: eigenvalues, trace, density.

The solvers work on any symmetric ``matvec(v) -> H v`` over flat float64
NumPy vectors (tested on explicit matrices); :class:`HessianProbe` supplies
the matvec as a Hessian-vector product of the mean loss over a dataset.

Every eigenpair comes with its relative residual ``||Hv - lambda v|| /
|lambda|``; ``tol`` is a bound on it for both eigen-solvers (for a symmetric
matrix the eigenvalue's error is at most ``tol * |lambda|``, usually far
less), and ``converged`` says whether every wanted pair met it.

- ``lanczos``: Lanczos with full re-orthogonalisation; the residual of each
  Ritz pair is ``|beta_k * s_k|`` (no extra matvec); stops when every wanted
  pair meets ``tol`` or at an invariant subspace.  ``which`` as in ARPACK /
  SciPy's ``eigsh``: ``"LM"`` largest magnitude, ``"LA"`` largest
  algebraic, ``"SA"`` smallest algebraic, ``"BE"`` both ends.
- ``extreme_eigenvalues``: lambda_max and lambda_min (and their ratio) from
  one Lanczos run in which both ends converge.
- ``power_iteration``: largest-magnitude eigenpairs one at a time, deflated
  by keeping the iterate orthogonal to those found.  It stalls when the
  extreme eigenvalues have nearly equal magnitude and opposite signs (the
  iterate swings between the two ends), common at initialisation.
- ``hutchinson_trace``: mean of ``z.Hz`` over Rademacher vectors ``z``;
  stops when the standard error is below ``tol`` relative to the estimate.
- ``hutchpp_trace``: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the
  exact trace of ``H`` on a low-rank sketch ``Q`` plus Hutchinson on the
  rest, ``(I - QQ^T) H (I - QQ^T)``, whose variance is much smaller when a
  few large eigenvalues dominate.  The sketch is a Lanczos (Krylov) basis by
  default -- its trace is the sum of the Lanczos ``alpha``, free -- or the
  paper's ``orth(H S)`` of a random sign block ``S``.
- ``slq_density``: stochastic Lanczos quadrature (Ghorbani et al. 2019):
  Ritz values with weights ``(first component of the Ritz vector)^2``,
  averaged over runs and smoothed by a Gaussian kernel.

The solvers only report (``converged``, residuals, standard errors);
:class:`HessianProbe` also warns (:class:`~tfnas.probes.ProbeWarning`) when
a result misses its tolerance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from tfnas.probes.core import ModelLoss, ProbeError, ProbeWarning, as_batches

METHODS = ("lanczos", "power")
WHICH = ("LM", "LA", "SA", "BE")
TRACE_METHODS = ("hutchinson", "hutch++")
SKETCHES = ("lanczos", "random")


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _orthogonalize(v, basis):
    # Two passes of classical Gram-Schmidt ("twice is enough").
    for _ in range(2):
        for q in basis:
            v = v - np.dot(q, v) * q
    return v


def _check(top_n, max_iter, tol, which="LM"):
    if int(top_n) < 1:
        raise ProbeError(f"top_n must be >= 1, not {top_n}")
    if int(max_iter) < 1:
        raise ProbeError(f"max_iter must be >= 1, not {max_iter}")
    if not tol > 0:
        raise ProbeError(f"tol must be > 0, not {tol}")
    if which not in WHICH:
        raise ProbeError(f"which must be one of {WHICH}, not {which!r}")


def _relative(residual_norms, values):
    """``||Hv - lambda v|| / |lambda|`` (0 for an exact zero eigenpair)."""
    return np.asarray(residual_norms, float) / np.maximum(np.abs(np.asarray(values, float)), 1e-300)


def select(values, which: str, count: int) -> np.ndarray:
    """Indices of the ``count`` wanted values, in output order: ``"LM"`` by
    decreasing magnitude, ``"LA"`` decreasing, ``"SA"`` increasing, ``"BE"``
    the largest (decreasing) then the smallest (increasing), one more from
    the high end when ``count`` is odd (as ARPACK)."""
    values = np.asarray(values)
    if which == "LM":
        return np.argsort(-np.abs(values), kind="stable")[:count]
    if which == "LA":
        return np.argsort(-values, kind="stable")[:count]
    if which == "SA":
        return np.argsort(values, kind="stable")[:count]
    high = np.argsort(-values, kind="stable")[:(count + 1) // 2]
    taken = set(high.tolist())
    low = [i for i in np.argsort(values, kind="stable") if i not in taken][:count // 2]
    return np.concatenate([high, np.asarray(low, dtype=high.dtype)])


@dataclass
class EigenResult:
    eigenvalues: np.ndarray                 # in the order of ``which`` (see :func:`select`)
    eigenvectors: np.ndarray | None         # (top_n, dim) unit rows, or None
    num_matvecs: int
    converged: bool                         # every residual <= tol
    history: list = field(default_factory=list)   # estimate of the first wanted eigenvalue per matvec
    residuals: np.ndarray | None = None     # ||Hv - lambda v|| / |lambda| per eigenpair
    which: str = "LM"
    tol: float | None = None

    def unconverged(self) -> list:
        """``(eigenvalue, residual)`` of the pairs that missed ``tol``."""
        return [(float(v), float(r)) for v, r in zip(self.eigenvalues, self.residuals) if not r <= self.tol]

    def to_dict(self) -> dict:
        return {"eigenvalues": [float(v) for v in self.eigenvalues],
                "residuals": [float(r) for r in self.residuals], "converged": bool(self.converged),
                "num_hvps": int(self.num_matvecs), "which": self.which, "tol": self.tol}


def power_iteration(matvec, dim: int, top_n: int = 1, max_iter: int = 100, tol: float = 1e-3,
                    seed=0) -> EigenResult:
    """Largest-magnitude eigenpairs by power iteration with deflation.

    ``max_iter`` is per eigenvalue.  Each pair stops when the residual of
    the deflated operator is at most ``tol`` relative; the residual reported
    is that of ``H`` itself, ``||Hv - lambda v|| / |lambda|`` (of the
    Rayleigh quotient and the vector it came from, same matvec), which also
    carries the error of the eigenvectors deflated before: a later pair can
    miss ``tol`` slightly."""
    _check(top_n, max_iter, tol)
    top_n = min(int(top_n), dim)
    rng = _rng(seed)
    values, vectors, residuals, history = [], [], [], []
    num_matvecs = 0
    for _ in range(top_n):
        v = _orthogonalize(rng.standard_normal(dim), vectors)
        v /= np.linalg.norm(v)
        for step in range(int(max_iter)):
            hv = matvec(v)
            num_matvecs += 1
            estimate = float(np.dot(v, hv))      # Rayleigh quotient
            residual = float(_relative(np.linalg.norm(hv - estimate * v), estimate))
            if not vectors:
                history.append(estimate)
            w = _orthogonalize(hv, vectors)
            norm = np.linalg.norm(w)
            # Deflated residual: reachable even when earlier vectors are inexact.
            if _relative(np.linalg.norm(w - estimate * v), estimate) <= tol or norm == 0.0:
                break
            if step + 1 < int(max_iter):          # else keep the vector the residual is of
                v = w / norm
        values.append(estimate)
        vectors.append(v)
        residuals.append(residual)
    order = np.argsort(-np.abs(values), kind="stable")
    residuals = np.asarray(residuals)[order]
    return EigenResult(np.asarray(values)[order], np.asarray(vectors)[order], num_matvecs,
                       bool(np.all(residuals <= tol)), history, residuals, "LM", float(tol))


def _lanczos_steps(matvec, dim, max_steps, rng, on_step=None):
    """Run Lanczos with full re-orthogonalisation.  ``on_step(alpha, beta)``
    may return True to stop.  Returns (Q rows, alpha, beta, stopped_early)."""
    q = rng.standard_normal(dim)
    q /= np.linalg.norm(q)
    basis, alpha, beta = [q], [], []
    for k in range(min(int(max_steps), dim)):
        w = matvec(basis[k])
        a = float(np.dot(basis[k], w))
        alpha.append(a)
        w = _orthogonalize(w, basis)
        b = float(np.linalg.norm(w))
        beta.append(b)
        if on_step is not None and on_step(alpha, beta):
            return basis[:k + 1], alpha, beta, True
        scale = max(abs(a), b, 1e-300)
        if b <= 1e-12 * scale or k + 1 == dim:       # invariant subspace: exact
            return basis[:k + 1], alpha, beta, True
        basis.append(w / b)
    return basis[:len(alpha)], alpha, beta, False


def _tridiagonal_eig(alpha, beta):
    k = len(alpha)
    t = np.diag(alpha)
    if k > 1:
        off = np.asarray(beta[:k - 1])
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)


def _ritz_residuals(theta, s, beta, wanted):
    """Relative residuals of the wanted Ritz pairs: ``|beta_k s_k| / |theta|``."""
    return _relative(np.abs(beta[-1] * s[-1, wanted]), theta[wanted])


def lanczos(matvec, dim: int, top_n: int = 1, max_iter: int = 100, tol: float = 1e-3,
            seed=0, return_vectors: bool = False, which: str = "LM") -> EigenResult:
    """``top_n`` eigenpairs chosen by ``which`` (see :func:`select`) by
    Lanczos, ``max_iter`` matvecs at most; stops when every wanted Ritz
    pair's relative residual is at most ``tol``."""
    _check(top_n, max_iter, tol, which)
    top_n = min(int(top_n), dim)
    history = []

    def converged(alpha, beta):
        theta, s = _tridiagonal_eig(alpha, beta)
        wanted = select(theta, which, top_n)
        history.append(float(theta[wanted[0]]))
        return len(alpha) >= top_n and bool(np.all(_ritz_residuals(theta, s, beta, wanted) <= tol))

    basis, alpha, beta, _ = _lanczos_steps(matvec, dim, max_iter, _rng(seed), converged)
    theta, s = _tridiagonal_eig(alpha, beta)
    wanted = select(theta, which, top_n)
    residuals = _ritz_residuals(theta, s, beta, wanted)
    if len(alpha) == dim:       # the whole space: Ritz pairs are exact eigenpairs
        residuals = np.zeros(len(wanted))
    vectors = None
    if return_vectors:
        vectors = (np.asarray(basis).T @ s[:, wanted]).T
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    done = len(wanted) == top_n and bool(np.all(residuals <= tol))
    return EigenResult(theta[wanted], vectors, len(alpha), done, history, residuals, which, float(tol))


@dataclass
class ExtremeEigenvalues:
    """lambda_max, lambda_min and lambda_min / lambda_max of a Hessian."""
    lambda_max: float                 # largest algebraic eigenvalue
    lambda_min: float                 # smallest algebraic eigenvalue
    residuals: dict                   # {"lambda_max": r, "lambda_min": r}, ||Hv - lambda v|| / |lambda|
    converged: bool                   # both residuals <= tol
    num_hvps: int
    tol: float
    vectors: np.ndarray | None = None   # (2, dim): unit eigenvectors of lambda_max, lambda_min

    @property
    def ratio(self) -> float:
        """lambda_min / lambda_max (as Li et al. 2018 report it); NaN if lambda_max is 0."""
        return self.lambda_min / self.lambda_max if self.lambda_max != 0 else math.nan

    def unconverged(self) -> list:
        """``(name, eigenvalue, residual)`` of the ends that missed ``tol``."""
        return [(name, getattr(self, name), r) for name, r in self.residuals.items() if not r <= self.tol]

    def to_dict(self) -> dict:
        ratio = self.ratio
        return {"lambda_max": self.lambda_max, "lambda_min": self.lambda_min,
                "ratio": None if math.isnan(ratio) else ratio, "residuals": dict(self.residuals),
                "converged": self.converged, "num_hvps": self.num_hvps, "tol": self.tol,
                "method": "lanczos"}


def extreme_eigenvalues(matvec, dim: int, max_iter: int = 100, tol: float = 1e-3, seed=0,
                        return_vectors: bool = False) -> ExtremeEigenvalues:
    """lambda_max and lambda_min from one Lanczos run that stops when both
    ends meet ``tol`` (``which="BE"``)."""
    if dim == 1:
        value = float(matvec(np.ones(1))[0])
        return ExtremeEigenvalues(value, value, {"lambda_max": 0.0, "lambda_min": 0.0}, True, 1,
                                  float(tol), np.ones((2, 1)) if return_vectors else None)
    result = lanczos(matvec, dim, 2, max_iter, tol, seed, return_vectors, which="BE")
    values, residuals = result.eigenvalues, result.residuals
    if len(values) < 2:         # a single Lanczos step: both ends are the one Ritz value
        values, residuals = np.repeat(values, 2), np.repeat(residuals, 2)
    return ExtremeEigenvalues(float(values[0]), float(values[1]),
                              {"lambda_max": float(residuals[0]), "lambda_min": float(residuals[1])},
                              bool(result.converged), result.num_matvecs, float(tol), result.eigenvectors)


@dataclass
class TraceEstimate:
    """A stochastic estimate of ``trace(H)`` with its standard error.

    Unpacks as ``estimate, standard_error = probe.trace()``."""
    estimate: float
    standard_error: float
    num_hvps: int              # all matvecs, the sketch's included
    converged: bool            # standard_error <= tol * |estimate|
    method: str                # "hutchinson" or "hutch++"
    tol: float
    samples: np.ndarray        # z.Hz of the Hutchinson part (on the sketch's complement for hutch++)
    sketch_size: int = 0       # hutch++: rank of the sketch
    sketch_trace: float = 0.0  # hutch++: exact trace of H on the sketch

    def __iter__(self):
        return iter((self.estimate, self.standard_error))

    @property
    def relative_error(self) -> float:
        """Standard error / |estimate| (inf for a zero estimate)."""
        return self.standard_error / abs(self.estimate) if self.estimate != 0 else math.inf

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "standard_error": self.standard_error,
                "relative_error": None if math.isinf(self.relative_error) else self.relative_error,
                "converged": self.converged, "num_hvps": self.num_hvps, "method": self.method,
                "tol": self.tol, "num_samples": int(len(self.samples)), "sketch_size": self.sketch_size,
                "sketch_trace": self.sketch_trace}


def _sample_until(quadratic_form, dim, budget, tol, offset, rng, min_samples):
    """Rademacher samples of ``quadratic_form(z)`` until the standard error of
    ``offset + mean`` is at most ``tol`` relative, or ``budget`` samples."""
    samples = []
    for i in range(int(budget)):
        samples.append(quadratic_form(rng.choice(np.array([-1.0, 1.0]), size=dim)))
        if i + 1 >= max(2, min_samples):
            se = np.std(samples, ddof=1) / np.sqrt(len(samples))
            if se <= tol * abs(offset + np.mean(samples)):
                break
    samples = np.asarray(samples)
    return samples, float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else 0.0


def _check_trace(max_iter, tol, least):
    if int(max_iter) < least:
        raise ProbeError(f"max_iter must be >= {least} for a standard error, not {max_iter}")
    if not tol > 0:
        raise ProbeError(f"tol must be > 0, not {tol}")


def hutchinson_trace(matvec, dim: int, max_iter: int = 100, tol: float = 1e-2, seed=0,
                     min_samples: int = 10) -> TraceEstimate:
    """Hutchinson's estimate of ``trace(H)``: at most ``max_iter`` matvecs,
    stopping (after ``min_samples``) once the standard error is at most
    ``tol * |estimate|``."""
    _check_trace(max_iter, tol, 2)
    samples, se = _sample_until(lambda z: float(np.dot(z, matvec(z))), dim, max_iter, tol, 0.0,
                                _rng(seed), min_samples)
    estimate = float(samples.mean())
    return TraceEstimate(estimate, se, len(samples), se <= tol * abs(estimate), "hutchinson", float(tol),
                         samples)


def _sketch(matvec, dim, size, kind, rng):
    """(orthonormal rows Q, trace of Q H Q^T, matvecs) of a rank-``size`` sketch."""
    if kind == "lanczos":
        basis, alpha, _, _ = _lanczos_steps(matvec, dim, size, rng)
        return np.asarray(basis), float(np.sum(alpha)), len(alpha)
    block = rng.choice(np.array([-1.0, 1.0]), size=(dim, size))
    q, _ = np.linalg.qr(np.stack([matvec(col) for col in block.T], axis=1))
    q = q.T
    return q, float(sum(np.dot(row, matvec(row)) for row in q)), 2 * len(q)


def hutchpp_trace(matvec, dim: int, max_iter: int = 100, tol: float = 1e-2, seed=0,
                  sketch_size: int | None = None, sketch: str = "lanczos",
                  min_samples: int = 10) -> TraceEstimate:
    """Hutch++ estimate of ``trace(H)`` in at most ``max_iter`` matvecs.

    ``sketch="lanczos"`` (default): ``sketch_size`` Lanczos steps, one matvec
    each; ``"random"``: the paper's ``Q = orth(H S)``, two matvecs per
    column.  ``sketch_size`` defaults to a third of ``max_iter`` (the
    paper's split).  The rest of the budget samples Hutchinson on the
    complement of the sketch until its standard error (the estimate's: the
    sketch's part is exact) is at most ``tol * |estimate|``.  The sketch
    pays off when a few eigenvalues carry much of ``||H||_F`` (a trained
    network), not when many of similar size do (a network at
    initialisation): see docs/benchmarks.md."""
    if sketch not in SKETCHES:
        raise ProbeError(f"sketch must be one of {SKETCHES}, not {sketch!r}")
    size = max(1, int(max_iter) // 3) if sketch_size is None else int(sketch_size)
    if size < 1:
        raise ProbeError(f"sketch_size must be >= 1, not {sketch_size}")
    _check_trace(max_iter, tol, size * (1 if sketch == "lanczos" else 2) + 2)
    rng = _rng(seed)
    q, sketch_trace, used = _sketch(matvec, dim, min(size, dim), sketch, rng)
    if len(q) >= dim:           # the sketch spans the space: its trace is exact
        return TraceEstimate(sketch_trace, 0.0, used, True, "hutch++", float(tol), np.zeros(0),
                             len(q), sketch_trace)

    def complement_form(z):
        z = z - q.T @ (q @ z)
        return float(np.dot(z, matvec(z)))

    samples, se = _sample_until(complement_form, dim, int(max_iter) - used, tol, sketch_trace, rng,
                                min_samples)
    estimate = sketch_trace + float(samples.mean())
    return TraceEstimate(estimate, se, used + len(samples), se <= tol * abs(estimate), "hutch++",
                         float(tol), samples, len(q), sketch_trace)


@dataclass
class SpectralDensity:
    grid: np.ndarray        # eigenvalue axis
    density: np.ndarray     # smoothed density on grid (integrates to ~1)
    nodes: np.ndarray       # (runs, steps) Ritz values
    weights: np.ndarray     # (runs, steps) quadrature weights; each row sums to 1
    sigma: float

    def to_dict(self) -> dict:
        return {"grid": self.grid.tolist(), "density": self.density.tolist(),
                "nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "sigma": self.sigma}


def slq_density(matvec, dim: int, num_runs: int = 1, num_steps: int = 100, num_points: int = 1000,
                sigma: float | None = None, seed=0) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature.

    ``sigma`` (kernel width) defaults to 1% of the spectral range seen; the
    grid extends 6 sigma past the extreme Ritz values, so the smoothed
    density integrates to 1 up to the trapezoid rule's error."""
    rng = _rng(seed)
    steps = min(int(num_steps), dim)
    nodes = np.full((int(num_runs), steps), np.nan)
    weights = np.zeros((int(num_runs), steps))
    for r in range(int(num_runs)):
        _, alpha, beta, _ = _lanczos_steps(matvec, dim, steps, rng)
        theta, s = _tridiagonal_eig(alpha, beta)
        nodes[r, :len(theta)] = theta
        weights[r, :len(theta)] = s[0, :] ** 2
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(1e-3 * abs(hi), 1e-6)
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, int(num_points))
    valid = ~np.isnan(nodes)
    diff = grid[:, None] - nodes[valid][None, :]
    kernel = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    density = kernel @ weights[valid] / num_runs
    return SpectralDensity(grid, density, nodes, weights, float(sigma))


def _warn_eigen(unconverged, num_hvps, tol, max_iter, what="eigenvalue"):
    listed = ", ".join(f"{name} {value:.6g} (residual {residual:.2e})" for name, value, residual in unconverged)
    warnings.warn(f"Hessian {what} not converged after {num_hvps} HVPs: {listed} > tol {tol:g} "
                  f"(residual = ||Hv - lambda v|| / |lambda|); raise max_iter (now {max_iter})",
                  ProbeWarning, stacklevel=3)


class HessianProbe:
    """Curvature of ``loss_fn`` averaged over ``data`` at the model's weights.

    ``data``: a ``tf.data.Dataset`` of ``(x, y)`` batches (the Hessian is
    that of the mean loss over all their examples), a list of such pairs, or
    one ``(x, y)`` pair.  The batches are materialised in memory once (see
    :func:`tfnas.probes.core.as_batches`); ``max_batches`` limits them.
    ``variables``: all trainable (default) or a subset (variables, layers or
    paths).  ``training=False`` probes BN in inference mode; ``True`` uses
    batch statistics (the model's moving statistics are still left as they
    were).  ``hvp_mode``: ``"back_over_back"`` (default; cheaper on NetworkCIFAR,
    see docs/benchmarks.md) or ``"forward_over_back"``.

    Results carry ``converged`` and their errors (residuals, standard
    error); a result that misses its tolerance also raises a
    :class:`~tfnas.probes.ProbeWarning` naming the value, its error and
    the parameter to raise.
    """

    def __init__(self, model, loss_fn, data, variables=None, training: bool = False,
                 hvp_mode: str = "back_over_back", max_batches: int | None = None, seed=0):
        self.loss = ModelLoss(model, loss_fn, variables, training=training, hvp_mode=hvp_mode)
        self.batches = as_batches(data, max_batches)
        self.rng = np.random.default_rng(seed)
        self.last_result = None

    @property
    def dim(self) -> int:
        return self.loss.size

    @property
    def num_hvps(self) -> int:
        """Full-data Hessian-vector products so far."""
        return self.loss.num_hvps // len(self.batches)

    def hvp(self, vector) -> np.ndarray:
        """Hessian of the mean loss over the data times a flat ``vector``."""
        return self.loss.hvp(self.batches, vector)

    def unflatten(self, flat) -> list:
        """Split a flat vector (e.g. an eigenvector) into per-variable arrays."""
        return self.loss.unflatten(flat)

    def eigenvalues(self, top_n: int = 1, max_iter: int = 100, tol: float = 1e-3,
                    method: str = "lanczos", return_vectors: bool = False, which: str = "LM"):
        """The ``top_n`` eigenvalues chosen by ``which`` -- ``"LM"`` largest
        magnitude (sorted by decreasing magnitude), ``"LA"`` largest
        algebraic (decreasing), ``"SA"`` smallest algebraic (increasing) --
        as a 1-D NumPy array; with ``return_vectors`` also a ``(top_n, dim)``
        array of unit eigenvectors (flat; see :meth:`unflatten`).

        ``method``: ``"lanczos"`` (default) or ``"power"`` (``"LM"`` only;
        it stalls on a +-lambda pair).  ``tol`` bounds each pair's residual
        ``||Hv - lambda v|| / |lambda|``; ``max_iter``: Lanczos steps in
        total, or power iterations per eigenvalue.  The full result
        (residuals, ``converged``, HVPs) is ``self.last_result``
        (:class:`EigenResult`)."""
        if method not in METHODS:
            raise ProbeError(f"method must be one of {METHODS}, not {method!r}")
        if method == "power" and which != "LM":
            raise ProbeError(f"power iteration finds largest-magnitude eigenvalues only (which='LM'), "
                             f"not which={which!r}: use method='lanczos'")
        if which not in ("LM", "LA", "SA"):
            raise ProbeError(f"which must be 'LM', 'LA' or 'SA', not {which!r}")
        if method == "power":
            result = power_iteration(self.hvp, self.dim, top_n, max_iter, tol, self.rng)
        else:
            result = lanczos(self.hvp, self.dim, top_n, max_iter, tol, self.rng, return_vectors, which)
        self.last_result = result
        if not result.converged:
            _warn_eigen([(f"eigenvalue ({which})", v, r) for v, r in result.unconverged()],
                        result.num_matvecs, tol, max_iter)
        if return_vectors:
            return result.eigenvalues, result.eigenvectors
        return result.eigenvalues

    def extremes(self, max_iter: int = 100, tol: float = 1e-3,
                 return_vectors: bool = False) -> ExtremeEigenvalues:
        """lambda_max (largest algebraic: the local Lipschitz constant of the
        gradient), lambda_min (smallest algebraic) and ``.ratio`` =
        lambda_min / lambda_max, from one Lanczos run of at most ``max_iter``
        steps that stops when both ends' residuals meet ``tol``.
        ``.to_dict()`` is a JSON-ready row."""
        result = extreme_eigenvalues(self.hvp, self.dim, max_iter, tol, self.rng, return_vectors)
        self.last_result = result
        if not result.converged:
            _warn_eigen(result.unconverged(), result.num_hvps, tol, max_iter, what="extreme eigenvalue")
        return result

    def trace(self, max_iter: int = 100, tol: float = 1e-2, method: str = "hutchinson",
              sketch_size: int | None = None, sketch: str = "lanczos") -> TraceEstimate:
        """Estimate of the trace in at most ``max_iter`` HVPs, stopping when
        the standard error is at most ``tol * |estimate|``.  ``method``:
        ``"hutchinson"`` or ``"hutch++"`` (see :func:`hutchpp_trace` for
        ``sketch_size`` and ``sketch``).  The result unpacks as
        ``estimate, standard_error``."""
        if method not in TRACE_METHODS:
            raise ProbeError(f"trace method must be one of {TRACE_METHODS}, not {method!r}")
        if method == "hutchinson":
            result = hutchinson_trace(self.hvp, self.dim, max_iter, tol, self.rng)
        else:
            result = hutchpp_trace(self.hvp, self.dim, max_iter, tol, self.rng, sketch_size, sketch)
        if not result.converged:
            warnings.warn(f"Hessian trace not converged after {result.num_hvps} HVPs: {result.estimate:.6g} "
                          f"± {result.standard_error:.3g} (standard error) > tol {tol:g} relative; "
                          f"raise max_iter (now {max_iter})", ProbeWarning, stacklevel=2)
        return result

    def density(self, num_runs: int = 1, num_steps: int = 100, num_points: int = 1000,
                sigma: float | None = None) -> SpectralDensity:
        """Spectral density by stochastic Lanczos quadrature."""
        return slq_density(self.hvp, self.dim, num_runs, num_steps, num_points, sigma, self.rng)
