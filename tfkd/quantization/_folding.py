"""The BatchNormalization-folding maths of `quantize_aware`, in NumPy alone.

At inference a BatchNormalization on its moving statistics is an affine map
per channel of its input's last axis:

```
bn(x) = gamma * (x - mean) / sqrt(variance + epsilon) + beta
      = x * scale + offset
scale = gamma / sqrt(variance + epsilon),  offset = beta - mean * scale
```

Folded into the Conv / DepthwiseConv2D / Dense before it, as the TFLite
converter folds it, each output channel's kernel slice is multiplied by its
`scale`, and the bias becomes `(bias - mean) * scale + beta`. A depthwise
kernel `(..., channels, multiplier)` has output channel `c * multiplier + m`.
Without `scale` (`gamma`) or `center` (`beta`), that factor is left out.

Every function takes and returns arrays, computes in float64 and returns
float32: the layers' weights are read and written by the caller.
"""

import numpy as np


def _float64(value):
    return None if value is None else np.asarray(value, np.float64)


def batch_norm_affine(mean, variance, epsilon, gamma=None, beta=None):
    """`(scale, offset)` of an inference BatchNormalization, in float64.

    Args:
        mean: the moving mean, one value per channel.
        variance: the moving variance, one value per channel.
        epsilon: the layer's `epsilon`.
        gamma: the learned scale, or None (`scale=False`).
        beta: the learned offset, or None (`center=False`).
    """
    scale = 1.0 / np.sqrt(_float64(variance) + epsilon)
    if gamma is not None:
        scale = scale * _float64(gamma)
    offset = -_float64(mean) * scale
    if beta is not None:
        offset = offset + _float64(beta)
    return scale, offset


def normalization_affine(mean, variance, epsilon):
    """`(scale, offset)` of a `Normalization` layer (not inverted), float64:
    `(x - mean) / max(sqrt(variance), epsilon)`."""
    scale = 1.0 / np.maximum(np.sqrt(_float64(variance)), epsilon)
    return scale, -_float64(mean) * scale


def per_channel(scale, offset, channels):
    """`(scale, offset)` as float32 vectors of `channels` values, or None if
    they do not broadcast to one value per channel."""
    try:
        scale = np.broadcast_to(np.reshape(scale, -1), (channels,))
        offset = np.broadcast_to(np.reshape(offset, -1), (channels,))
    except ValueError:
        return None
    return scale.astype(np.float32), offset.astype(np.float32)


def fold(
    kernel,
    bias,
    mean,
    variance,
    epsilon,
    gamma=None,
    beta=None,
    depthwise=False,
):
    """`(kernel, bias)` of a layer with the BatchNormalization after it
    folded in, as float32.

    Args:
        kernel: the layer's kernel, output channels on its last axis; for a
            depthwise convolution, `(..., channels, multiplier)`.
        bias: the layer's bias, one value per output channel (zeros for a
            layer without one).
        mean, variance, epsilon, gamma, beta: the BatchNormalization's, as
            in `batch_norm_affine`.
        depthwise: whether `kernel` is a depthwise kernel.
    """
    factor = 1.0 / np.sqrt(_float64(variance) + epsilon)
    if gamma is not None:
        factor = factor * _float64(gamma)
    kernel = _float64(kernel)
    if depthwise:
        kernel = kernel * factor.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * factor
    bias = (_float64(bias) - _float64(mean)) * factor
    if beta is not None:
        bias = bias + _float64(beta)
    return kernel.astype(np.float32), bias.astype(np.float32)
