"""GradientTape probes of trained models: Hessian spectrum, gradient variance,
filter-normalised loss landscapes (brief section 7).

All work on any built Keras model, any ``loss_fn(y_true, y_pred)`` and any
``tf.data.Dataset`` of ``(x, y)`` batches, and leave the model unchanged.
"""

from tfnas.probes.core import ModelLoss, ProbeError, ProbeWarning, as_batches, resolve_variables, snapshot  # noqa: F401
from tfnas.probes.gradvar import gradient_variance  # noqa: F401
from tfnas.probes.hessian import (  # noqa: F401
    EigenResult, ExtremeEigenvalues, HessianProbe, SpectralDensity, TraceEstimate, extreme_eigenvalues,
    hutchinson_trace, hutchpp_trace, lanczos, power_iteration, slq_density,
)
from tfnas.probes.landscape import (  # noqa: F401
    Landscape, direction_to, filter_axes, load_landscape, loss_landscape, normalize_direction,
    random_direction,
)
from tfnas.probes.cast import cast_model  # noqa: F401
