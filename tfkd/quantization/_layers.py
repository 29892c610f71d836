"""Keras 3 fake-quantization layers: what `quantize_aware` builds a model of.

Activations: `FakeQuant` keeps a moving-average `[min, max]` range (always
containing 0) per tensor and rounds the tensor to the 256 levels of int8
asymmetric quantization on it; one `FakeQuant` called on the inputs and the
output of a Concatenate gives them one range, as TFLite requires.

Kernels: `QuantizedDense`, `QuantizedConv1D`, `QuantizedConv2D` and
`QuantizedDepthwiseConv2D` are the Keras layers whose kernel is rounded on
every call to symmetric int8 (narrow range, zero point 0), from its own
absolute maximum: per output channel for convolutions (a depthwise kernel per
channel of its output), per tensor for Dense, as the TFLite converter
quantizes them.

```
fake_quant(x; lo, hi) = s * (clip(round(x / s) - z, qmin, qmax) + z)
s = (hi - lo) / (qmax - qmin),  activations [-128, 127], kernels [-127, 127]
```

Each op is TensorFlow's `fake_quant_with_min_max_vars(_per_channel)`, whose
gradient is the straight-through estimator (1 inside the range, 0 outside),
and which the TFLite converter turns into int8 tensors with exactly these
scales. Maths in float32 under mixed precision.

Reference: Jacob et al. "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
"""

import contextlib
import contextvars

import tensorflow as tf

from tfkd import _keras
from tfkd._keras import keras

NUM_BITS = 8
# Whether `FakeQuant`s read their ranges as they are: a context variable, so
# that the export mode holds only in the thread (and context) that set it.
_EXPORTING = contextvars.ContextVar("tfkd_qat_exporting", default=False)


@contextlib.contextmanager
def exporting():
    """A context in which activation ranges are read as they are (no
    first-call fallback): `to_tflite` traces a model in it, so that the
    converter sees each learned range as a constant."""
    token = _EXPORTING.set(True)
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def _global_extreme(value, reduce):
    """`value` reduced over the replicas in sync (identical on each)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return reduce(context.all_gather(value[None], axis=0))


def _as_float32(x):
    return tf.cast(x, tf.float32) if x.dtype != tf.float32 else x


class _Range:
    """A moving-average `[min, max]` activation range (mixed into layers)."""

    def _init_range(self, momentum):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"`momentum` must be in [0, 1). Received: momentum={momentum!r}"
            )
        self.momentum = float(momentum)

    def _build_range(self):
        def weight(name):
            return self.add_weight(
                shape=(),
                initializer="zeros",
                trainable=False,
                autocast=False,
                aggregation="mean",
                name=name,
            )

        self.range_min = weight("range_min")
        self.range_max = weight("range_max")
        self.initialized = weight("initialized")

    def _range(self, values, training, update=True):
        """The range for this batch; moved by it in training if `update`."""
        if _EXPORTING.get():
            return self.range_min, self.range_max
        values = [_as_float32(v) for v in values]
        low = tf.reduce_min(tf.stack([tf.reduce_min(v) for v in values]))
        high = tf.reduce_max(tf.stack([tf.reduce_max(v) for v in values]))
        low = _global_extreme(tf.minimum(low, 0.0), tf.reduce_min)
        high = _global_extreme(tf.maximum(high, 0.0), tf.reduce_max)
        first = tf.equal(self.initialized, 0.0)
        if training and update:
            m = self.momentum
            low = tf.where(first, low, m * self.range_min + (1 - m) * low)
            high = tf.where(first, high, m * self.range_max + (1 - m) * high)
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.initialized.assign(1.0)
            return low, high
        return (
            tf.where(first, low, self.range_min),
            tf.where(first, high, self.range_max),
        )

    @staticmethod
    def _quantize(x, low, high):
        y = tf.quantization.fake_quant_with_min_max_vars(
            _as_float32(x), low, high, num_bits=NUM_BITS
        )
        return tf.cast(y, x.dtype)


@_keras.register_serializable
class FakeQuant(_Range, keras.layers.Layer):
    """Fake-quantizes a tensor to int8 on a learned moving-average range.

    In training, each batch's `[min(x, 0), max(x, 0)]` (over all replicas)
    moves the range: `r <- momentum * r + (1 - momentum) * r_batch`; the
    first training batch sets it. Before any training batch, inference uses
    each batch's own range, so a fresh QAT model is usable at once.

    One layer called on several tensors gives them one range (the inputs and
    output of a Concatenate, as TFLite's int8 CONCATENATION requires): the
    calls with `update=False` read it, the call on the concatenation, which
    holds every input's values, moves it.

    Args:
        momentum: of the moving average. Defaults to `0.99`.
        **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self._init_range(momentum)

    def build(self, input_shape):
        self._build_range()
        super().build(input_shape)

    def call(self, inputs, training=None, update=True):
        low, high = self._range([inputs], training, update)
        return self._quantize(inputs, low, high)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


def quantize_kernel(kernel, per_channel, depthwise=False):
    """Symmetric int8 fake quantization of a kernel from its own range.

    Per channel along the last axis (a depthwise kernel `(..., channels,
    multiplier)` per output channel, `channels * multiplier`), or per
    tensor. The range is not differentiated (straight-through estimator).
    """
    dtype = kernel.dtype
    w = _as_float32(kernel)
    shape = tf.shape(w)
    if depthwise:
        w = tf.reshape(w, tf.concat([shape[:-2], [1, -1]], axis=0))
    if per_channel:
        axes = list(range(len(w.shape) - 1))
        bound = tf.stop_gradient(tf.reduce_max(tf.abs(w), axis=axes))
        bound = tf.maximum(bound, 1e-8)
        w = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            w, -bound, bound, num_bits=NUM_BITS, narrow_range=True
        )
    else:
        bound = tf.maximum(tf.stop_gradient(tf.reduce_max(tf.abs(w))), 1e-8)
        w = tf.quantization.fake_quant_with_min_max_vars(
            w, -bound, bound, num_bits=NUM_BITS, narrow_range=True
        )
    if depthwise:
        w = tf.reshape(w, shape)
    return tf.cast(w, dtype)


@_keras.register_serializable
class QuantizedDense(keras.layers.Dense):
    """`keras.layers.Dense` with a per-tensor int8 fake-quantized kernel."""

    def call(self, inputs, training=None):
        kernel = quantize_kernel(self.kernel, per_channel=False)
        outputs = keras.ops.matmul(inputs, kernel)
        if self.use_bias:
            outputs = keras.ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


class _QuantizedConv:
    """Convolutions whose kernel is fake-quantized per output channel."""

    def convolution_op(self, inputs, kernel):
        kernel = quantize_kernel(kernel, per_channel=True)
        return super().convolution_op(inputs, kernel)


@_keras.register_serializable
class QuantizedConv1D(_QuantizedConv, keras.layers.Conv1D):
    """`keras.layers.Conv1D` with a per-channel int8 fake-quantized kernel."""


@_keras.register_serializable
class QuantizedConv2D(_QuantizedConv, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with a per-channel int8 fake-quantized kernel."""


@_keras.register_serializable
class QuantizedDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D`, kernel fake-quantized per channel."""

    def call(self, inputs):
        kernel = quantize_kernel(self.kernel, per_channel=True, depthwise=True)
        outputs = keras.ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            bias = self.bias
            if self.data_format != "channels_last":
                bias = keras.ops.reshape(bias, (-1,) + (1,) * self.rank)
            outputs = keras.ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


# Keras layer class -> its fake-quantized replacement.
QUANTIZED = {
    keras.layers.Dense: QuantizedDense,
    keras.layers.Conv1D: QuantizedConv1D,
    keras.layers.Conv2D: QuantizedConv2D,
    keras.layers.DepthwiseConv2D: QuantizedDepthwiseConv2D,
}
