"""Gradient variance over the mini-batches of a dataset (brief section 7).

With g_i the gradient of the mean loss of mini-batch i (all probed
parameters flattened into one vector) and g_bar their plain mean over the
batches, report E||g_i - g_bar||, E||g_i - g_bar||^2 and ||g_bar||.

Memory is O(parameters): two passes over the batches.  Pass 1 accumulates
the sum of the g_i (one vector); pass 2 recomputes each g_i and accumulates
the norms of g_i - g_bar.  A one-pass Welford update would give the squared
deviation but not the mean *norm* deviation, which needs g_bar first; the
second pass costs one more gradient per batch, never storing more than
three parameter-sized vectors.  Pass 2 also re-sums the gradients: if the
sum differs from pass 1's, the data changed between passes (a shuffled or
augmented pipeline) and the result would be meaningless, so it raises.
"""

from __future__ import annotations

import numpy as np

from tfnas.probes.core import ModelLoss, ProbeError


def _layer_of(variable) -> str:
    path = getattr(variable, "path", None) or variable.name
    return path.rsplit("/", 1)[0] if "/" in path else path


def _deviation_stats(sq_norms: np.ndarray, mean_gradient_sq_norm: float) -> dict:
    return {"mean_norm_deviation": float(np.mean(np.sqrt(sq_norms))),
            "mean_sq_deviation": float(np.mean(sq_norms)),
            "mean_gradient_norm": float(np.sqrt(mean_gradient_sq_norm))}


def gradient_variance(model, loss_fn, data, per_layer: bool = False, variables=None,
                      training: bool = False, model_loss: ModelLoss | None = None,
                      rtol_consistency: float = 1e-5) -> dict:
    """Gradient variance of ``loss_fn`` over the batches of ``data``.

    Returns ``dict(mean_norm_deviation, mean_sq_deviation,
    mean_gradient_norm, num_batches, batch_size, num_examples, num_parameters)``
    and, with ``per_layer``, ``layers: {layer_path: {the three norms,
    num_parameters}}`` (a layer's variables grouped by their path).
    ``batch_size`` is that of the first batch; each batch counts equally (a
    smaller last batch adds its larger variance; use ``drop_remainder`` in
    the pipeline to avoid it).  ``data`` is iterated twice and must yield the
    same batches both times.  ``model_loss`` reuses compiled functions (the
    landscape passes one in to avoid retracing per grid point).
    """
    loss = model_loss or ModelLoss(model, loss_fn, variables, training=training)
    gradient_sum = np.zeros(loss.size)
    num_batches, batch_size, num_examples = 0, None, 0
    for element in data:
        x, y = element[0], element[1]
        gradient_sum += loss.batch_gradient(x, y)[1]
        num_batches += 1
        batch_size = int(x.shape[0]) if batch_size is None else batch_size
        num_examples += int(x.shape[0])
    if num_batches == 0:
        raise ProbeError("data is empty: no (x, y) batch to probe")
    mean = gradient_sum / num_batches

    bounds = list(zip(loss.offsets[:-1], loss.offsets[1:]))
    sq_per_variable = np.zeros((num_batches, len(bounds)))
    resum = np.zeros(loss.size)
    seen = 0
    for i, element in enumerate(data):
        if i >= num_batches:
            seen = i + 1
            break
        g = loss.batch_gradient(element[0], element[1])[1]
        resum += g
        deviation = (g - mean) ** 2
        sq_per_variable[i] = [deviation[a:b].sum() for a, b in bounds]
        seen = i + 1
    scale = max(np.linalg.norm(gradient_sum), 1e-300)
    if seen != num_batches or np.linalg.norm(resum - gradient_sum) > rtol_consistency * scale \
            + 1e-12 * np.sqrt(loss.size):
        raise ProbeError("data yielded different batches on the second pass (shuffled or augmented?); "
                         "gradient variance needs a deterministic dataset")

    result = _deviation_stats(sq_per_variable.sum(axis=1), float(np.dot(mean, mean)))
    result.update(num_batches=num_batches, batch_size=batch_size, num_examples=num_examples,
                  num_parameters=loss.size)
    if per_layer:
        layers = {}
        for j, v in enumerate(loss.variables):
            layers.setdefault(_layer_of(v), []).append(j)
        result["layers"] = {}
        for name, idx in layers.items():
            mean_sq = sum(float(np.dot(mean[bounds[j][0]:bounds[j][1]], mean[bounds[j][0]:bounds[j][1]]))
                          for j in idx)
            stats = _deviation_stats(sq_per_variable[:, idx].sum(axis=1), mean_sq)
            stats["num_parameters"] = int(sum(loss.sizes[j] for j in idx))
            result["layers"][name] = stats
    return result
