"""The BatchNormalization-folding maths of the QAT rewrite, against NumPy.

`tfkd.quantization._folding` is NumPy alone: each folded kernel and bias is
checked by running the layer in NumPy (Dense, Conv1D, Conv2D, depthwise
Conv2D with a channel multiplier, valid padding) and comparing the folded
layer's outputs with the layer followed by an inference BatchNormalization,
on random data.
"""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tfkd.quantization import _folding

pytestmark = pytest.mark.mode_independent  # NumPy only, no Keras.

CHANNELS_IN = 3


def _dense(x, kernel):
    return x @ kernel


def _conv1d(x, kernel):
    windows = sliding_window_view(x, kernel.shape[0], axis=1)
    return np.einsum("nlck,kco->nlo", windows, kernel)


def _conv2d(x, kernel):
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel)


def _depthwise(x, kernel):
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))
    out = np.einsum("nhwcij,ijcm->nhwcm", windows, kernel)
    return out.reshape(out.shape[:3] + (-1,))  # channel c * m + j


# name -> (NumPy layer, input shape, kernel shape, output channels)
LAYERS = {
    "dense": (_dense, (5, CHANNELS_IN), (CHANNELS_IN, 4), 4),
    "conv1d": (_conv1d, (2, 7, CHANNELS_IN), (3, CHANNELS_IN, 4), 4),
    "conv2d": (_conv2d, (2, 6, 5, CHANNELS_IN), (3, 2, CHANNELS_IN, 4), 4),
    "depthwise": (
        _depthwise,
        (2, 6, 5, CHANNELS_IN),
        (3, 3, CHANNELS_IN, 2),
        2 * CHANNELS_IN,
    ),
}

# name -> BatchNormalization options (`use_bias` is the layer's).
CASES = {
    "plain": {},
    "large_epsilon": {"epsilon": 0.5},
    "no_bias": {"use_bias": False},
    "scale_false": {"scale": False},
    "center_false": {"center": False},
    "neither": {"scale": False, "center": False, "use_bias": False},
}


def _batch_norm(y, mean, variance, epsilon, gamma, beta):
    """Inference BatchNormalization, written out (in float64)."""
    y, mean, variance = (np.float64(v) for v in (y, mean, variance))
    out = (y - mean) / np.sqrt(variance + epsilon)
    if gamma is not None:
        out = out * np.float64(gamma)
    if beta is not None:
        out = out + np.float64(beta)
    return out


def _statistics(rng, channels, case):
    stats = {
        "mean": rng.normal(size=channels).astype("float32"),
        "variance": rng.uniform(0.1, 3.0, channels).astype("float32"),
        "epsilon": case.get("epsilon", 1e-3),
        "gamma": rng.uniform(-2.0, 2.0, channels).astype("float32"),
        "beta": rng.normal(size=channels).astype("float32"),
    }
    if not case.get("scale", True):
        stats["gamma"] = None
    if not case.get("center", True):
        stats["beta"] = None
    return stats


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_folded_layer_equals_layer_then_batch_norm(kind, case):
    options = CASES[case]
    run, x_shape, kernel_shape, channels = LAYERS[kind]
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype("float32")
    kernel = rng.normal(size=kernel_shape).astype("float32")
    if options.get("use_bias", True):
        bias = rng.normal(size=channels).astype("float32")
    else:
        bias = np.zeros(channels, "float32")
    stats = _statistics(rng, channels, options)
    expected = _batch_norm(
        run(x.astype("float64"), kernel.astype("float64")) + bias, **stats
    )

    folded_kernel, folded_bias = _folding.fold(
        kernel, bias, depthwise=kind == "depthwise", **stats
    )

    assert folded_kernel.dtype == folded_bias.dtype == np.float32
    assert folded_kernel.shape == kernel.shape
    assert folded_bias.shape == (channels,)
    got = run(x.astype("float64"), folded_kernel) + folded_bias
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_norm_affine_is_the_inference_batch_norm(case):
    rng = np.random.default_rng(1)
    stats = _statistics(rng, 4, CASES[case])
    y = rng.normal(size=(6, 4))

    scale, offset = _folding.batch_norm_affine(**stats)

    np.testing.assert_allclose(
        y * scale + offset, _batch_norm(y, **stats), rtol=1e-12, atol=1e-12
    )


def test_normalization_affine_clamps_the_standard_deviation_at_epsilon():
    mean = np.array([0.5, -1.0, 2.0])
    variance = np.array([4.0, 0.0, 1e-12])  # two below epsilon**2
    x = np.random.default_rng(2).normal(size=(5, 3))

    scale, offset = _folding.normalization_affine(mean, variance, 1e-3)

    expected = (x - mean) / np.array([2.0, 1e-3, 1e-3])
    np.testing.assert_allclose(x * scale + offset, expected, rtol=1e-12)


def test_per_channel_broadcasts_a_scalar_and_refuses_a_mismatch():
    scale, offset = _folding.per_channel(np.float64(0.5), np.zeros(3), 3)
    assert scale.dtype == offset.dtype == np.float32
    np.testing.assert_array_equal(scale, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(offset, [0.0, 0.0, 0.0])
    assert _folding.per_channel(np.ones(2), np.zeros(2), 3) is None
