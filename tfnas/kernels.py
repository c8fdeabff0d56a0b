"""Which kernels the operations run: the one kernel policy (no TensorFlow).

Some operations of :mod:`tfnas.ops` have a second implementation tuned for
CPUs (oneDNN), computing the same function as TensorFlow's standard kernel:

- ``pointwise_matmul``: a 1×1 convolution as one matrix product
  (:class:`tfnas.ops.PointwiseConv2D`);
- ``depthwise_filter_gradient``: the filter gradient of a 5×5-or-larger
  stride-1 depthwise convolution as one depthwise convolution
  (:class:`tfnas.ops.DepthwiseConv2D`, :func:`tfnas.ops.depthwise_conv2d`);
- ``max_pool_gradient_recomputes``: a max pool whose gradient is traced in a
  loop recomputes the pooling next to it (:func:`tfnas.ops.max_pool_3x3`);
- ``subsample_space_to_depth``: ``x[:, ::2, ::2]`` by space-to-depth, whose
  gradient is cheaper on CPU than a strided slice's.

On a GPU the standard kernels (cuDNN) are the fast ones.  A setting is
``"cpu"``, ``"standard"`` or ``"auto"`` (the device's: ``cpu`` on a CPU,
``standard`` on anything else); layers keep the setting in their config
and resolve it when they are traced (:func:`tfnas.ops.kernel_policy`).

Choices made for correctness, not speed, are not part of the policy: the
max pool's deterministic second derivatives
(:func:`tfnas.ops.deterministic_second_derivatives`) and the exact
stride-2 dilated convolution of :class:`tfnas.ops.DilConv` hold on every
device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["KernelPolicy", "KERNEL_POLICIES", "KERNEL_CHOICES", "resolve_kernels", "check_kernels"]


@dataclass(frozen=True)
class KernelPolicy:
    """The kernels the operations use; each field True takes the CPU-tuned one."""

    name: str
    pointwise_matmul: bool
    depthwise_filter_gradient: bool
    max_pool_gradient_recomputes: bool
    subsample_space_to_depth: bool

    def to_dict(self) -> dict:
        return asdict(self)


KERNEL_POLICIES = {
    "cpu": KernelPolicy("cpu", True, True, True, True),
    "standard": KernelPolicy("standard", False, False, False, False),
}
KERNEL_CHOICES = ("auto", *KERNEL_POLICIES)


def check_kernels(kernels: str) -> str:
    """``kernels`` if it is a known setting, else ValueError naming the choices."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)} (got {kernels!r})")
    return kernels


def resolve_kernels(kernels: str, device_type: str) -> KernelPolicy:
    """The policy of setting ``kernels`` on a device of type ``device_type``
    (``"CPU"``, ``"GPU"``, ...): ``auto`` is ``cpu`` on a CPU, else ``standard``."""
    if check_kernels(kernels) == "auto":
        kernels = "cpu" if device_type.upper() == "CPU" else "standard"
    return KERNEL_POLICIES[kernels]
