"""Hessian spectrum of a Keras model's loss: top eigenvalues, trace, density.

The solvers work on any symmetric ``matvec(v) -> H v`` over flat float64
NumPy vectors (tested on explicit matrices); :class:`HessianProbe` supplies
the matvec as a Hessian-vector product of the mean loss over a dataset.

- ``power_iteration``: the top eigenpairs one at a time, each deflated by
  keeping the iterate orthogonal to the eigenvectors already found; stops
  when the Rayleigh quotient changes by less than ``tol`` relative.
- ``lanczos``: Lanczos with full re-orthogonalisation; stops when the
  residual bound ``|beta_k * s_k|`` of each wanted Ritz pair is below
  ``tol * |theta|`` (for a symmetric matrix the eigenvalue error is at most
  the residual, usually far less), or at an invariant subspace.
- ``hutchinson_trace``: mean of ``z.Hz`` over Rademacher vectors ``z``;
  stops when the standard error is below ``tol`` relative to the estimate.
- ``slq_density``: stochastic Lanczos quadrature (Ghorbani et al. 2019):
  Ritz values with weights ``(first component of the Ritz vector)^2``,
  averaged over runs and smoothed by a Gaussian kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfnas.probes.core import ModelLoss, ProbeError, as_batches

METHODS = ("power", "lanczos")


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _orthogonalize(v, basis):
    # Two passes of classical Gram-Schmidt ("twice is enough").
    for _ in range(2):
        for q in basis:
            v = v - np.dot(q, v) * q
    return v


def _check(top_n, max_iter, tol):
    if int(top_n) < 1:
        raise ProbeError(f"top_n must be >= 1, not {top_n}")
    if int(max_iter) < 1:
        raise ProbeError(f"max_iter must be >= 1, not {max_iter}")
    if not tol > 0:
        raise ProbeError(f"tol must be > 0, not {tol}")


@dataclass
class EigenResult:
    eigenvalues: np.ndarray                 # sorted by decreasing magnitude
    eigenvectors: np.ndarray | None         # (top_n, dim) rows, or None
    num_matvecs: int
    converged: bool
    history: list = field(default_factory=list)   # estimate of the top eigenvalue after each matvec


def power_iteration(matvec, dim: int, top_n: int = 1, max_iter: int = 100, tol: float = 1e-3,
                    seed=0) -> EigenResult:
    """Largest-magnitude eigenpairs by power iteration with deflation.

    ``max_iter`` is per eigenvalue; ``converged`` says whether every
    eigenvalue met ``tol``."""
    _check(top_n, max_iter, tol)
    top_n = min(int(top_n), dim)
    rng = _rng(seed)
    values, vectors, history = [], [], []
    num_matvecs, all_converged = 0, True
    for _ in range(top_n):
        v = _orthogonalize(rng.standard_normal(dim), vectors)
        v /= np.linalg.norm(v)
        estimate, converged = None, False
        for _ in range(int(max_iter)):
            w = _orthogonalize(matvec(v), vectors)
            num_matvecs += 1
            new = float(np.dot(v, w))            # Rayleigh quotient
            norm = np.linalg.norm(w)
            if not vectors:
                history.append(new)
            if norm == 0.0:                      # v in the null space: eigenvalue 0
                estimate, converged = 0.0, True
                break
            v = w / norm
            if estimate is not None and abs(new - estimate) <= tol * max(abs(new), 1e-300):
                estimate, converged = new, True
                break
            estimate = new
        # One more Rayleigh quotient with the final vector would cost a matvec;
        # the last one is accurate to the tolerance already.
        values.append(estimate)
        vectors.append(v)
        all_converged &= converged
    order = np.argsort(-np.abs(values), kind="stable")
    return EigenResult(np.asarray(values)[order], np.asarray(vectors)[order], num_matvecs,
                       all_converged, history)


def _lanczos_steps(matvec, dim, max_steps, rng, on_step=None):
    """Run Lanczos with full re-orthogonalisation.  ``on_step(Q, alpha, beta)``
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


def lanczos(matvec, dim: int, top_n: int = 1, max_iter: int = 100, tol: float = 1e-3,
            seed=0, return_vectors: bool = False) -> EigenResult:
    """Largest-magnitude eigenpairs by Lanczos (``max_iter`` matvecs at most)."""
    _check(top_n, max_iter, tol)
    top_n = min(int(top_n), dim)
    history = []

    def converged(alpha, beta):
        theta, s = _tridiagonal_eig(alpha, beta)
        history.append(float(theta[np.argmax(np.abs(theta))]))
        if len(alpha) < top_n:
            return False
        wanted = np.argsort(-np.abs(theta), kind="stable")[:top_n]
        residual = np.abs(beta[-1] * s[-1, wanted])
        return bool(np.all(residual <= tol * np.maximum(np.abs(theta[wanted]), 1e-300)))

    basis, alpha, beta, done = _lanczos_steps(matvec, dim, max_iter, _rng(seed), converged)
    theta, s = _tridiagonal_eig(alpha, beta)
    wanted = np.argsort(-np.abs(theta), kind="stable")[:top_n]
    vectors = None
    if return_vectors:
        vectors = (np.asarray(basis).T @ s[:, wanted]).T
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return EigenResult(theta[wanted], vectors, len(alpha), done, history)


def hutchinson_trace(matvec, dim: int, max_iter: int = 100, tol: float = 1e-3, seed=0,
                     min_samples: int = 10):
    """(estimate, standard_error, samples) of ``trace(H)``."""
    if int(max_iter) < 2:
        raise ProbeError(f"max_iter must be >= 2 for a standard error, not {max_iter}")
    rng = _rng(seed)
    samples = []
    for i in range(int(max_iter)):
        z = rng.choice(np.array([-1.0, 1.0]), size=dim)
        samples.append(float(np.dot(z, matvec(z))))
        if i + 1 >= max(2, min_samples):
            mean = np.mean(samples)
            se = np.std(samples, ddof=1) / np.sqrt(len(samples))
            if se <= tol * abs(mean):
                break
    samples = np.asarray(samples)
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(len(samples))), samples


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
    """

    def __init__(self, model, loss_fn, data, variables=None, training: bool = False,
                 hvp_mode: str = "back_over_back", max_batches: int | None = None, seed=0):
        self.loss = ModelLoss(model, loss_fn, variables, training=training, hvp_mode=hvp_mode)
        self.batches = as_batches(data, max_batches)
        self.rng = np.random.default_rng(seed)

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
                    method: str = "power", return_vectors: bool = False):
        """The ``top_n`` eigenvalues of largest magnitude, sorted by magnitude
        (1-D NumPy array); with ``return_vectors`` also a ``(top_n, dim)``
        array of unit eigenvectors (flat; see :meth:`unflatten`).

        ``tol``: relative change of the estimate between iterations (power)
        or relative residual bound (Lanczos).  ``max_iter``: iterations per
        eigenvalue (power) or Lanczos steps in total."""
        if method not in METHODS:
            raise ProbeError(f"method must be one of {METHODS}, not {method!r}")
        if method == "power":
            result = power_iteration(self.hvp, self.dim, top_n, max_iter, tol, self.rng)
        else:
            result = lanczos(self.hvp, self.dim, top_n, max_iter, tol, self.rng, return_vectors)
        self.last_result = result
        if return_vectors:
            return result.eigenvalues, result.eigenvectors
        return result.eigenvalues

    def trace(self, max_iter: int = 100, tol: float = 1e-3):
        """Hutchinson estimate of the trace: ``(estimate, standard_error)``."""
        estimate, se, _ = hutchinson_trace(self.hvp, self.dim, max_iter, tol, self.rng)
        return estimate, se

    def density(self, num_runs: int = 1, num_steps: int = 100, num_points: int = 1000,
                sigma: float | None = None) -> SpectralDensity:
        """Spectral density by stochastic Lanczos quadrature."""
        return slq_density(self.hvp, self.dim, num_runs, num_steps, num_points, sigma, self.rng)
