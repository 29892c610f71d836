"""Teacher and student models of the examples and benchmarks.

Small Functional CNNs, an MLP, a depthwise-separable CNN and a ResNet-20 for
28x28 grey and 32x32 RGB images (NHWC), built with the Keras that tfkd uses
(Keras 3, or tf_keras with `TF_USE_LEGACY_KERAS=1`): TFMOT's
quantization-aware training needs Functional or Sequential models. Every
model outputs LOGITS (no softmax) and names the layers that feature
distillation methods tap:

- `"features"`: the last conv block's ReLU maps, `(batch, h, w, channels)`,
  with the same `h, w` in `teacher_cnn` and the CNN student (the MLP has
  none; those of ResNet-20 and `student_separable` are smaller: 8x8 on 32x32
  images, the CNN student's 13x13);
- `"embedding"`: the penultimate dense layer, `(batch, width)` (ResNet-20:
  the global average pool, `(batch, 64)`).

Example:
    >>> from examples import models
    >>> teacher = models.build_model("teacher_cnn", (28, 28, 1), 10)
    >>> student = models.build_model("student_mlp", (28, 28, 1), 10)
"""

from tfkd import keras


def _conv_net(name, input_shape, num_classes, filters, width, dropout):
    """conv-pool-conv("features")-pool-flatten-dense("embedding")-logits."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(filters[0], 3, activation="relu", name="conv")(
        inputs
    )
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(filters[1], 3, activation="relu", name="features")(
        x
    )
    x = keras.layers.MaxPooling2D(name="features_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(width, activation="relu", name="embedding")(x)
    return keras.Model(inputs, _logits(x, num_classes), name=name)


def _logits(x, num_classes):
    # float32 logits: under a mixed precision policy, softmax and the losses
    # stay in float32.
    return keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)


def teacher_cnn(input_shape, num_classes):
    """The teacher: 32 and 64 3x3 filters, a 128-unit embedding, dropout.

    About 225k parameters on 28x28x1 (the README quickstart's teacher).
    """
    return _conv_net(
        "teacher_cnn", input_shape, num_classes, (32, 64), 128, dropout=0.5
    )


def student_cnn(input_shape, num_classes):
    """A thin CNN student: 8 and 16 filters, a 32-unit embedding.

    Its `"features"` maps have the teacher's spatial size (16 channels vs 64),
    so FitNets and attention transfer can compare them.
    """
    return _conv_net(
        "student_cnn", input_shape, num_classes, (8, 16), 32, dropout=0.0
    )


def student_mlp(input_shape, num_classes):
    """The MLP student: flatten, 32 ReLU units ("embedding"), logits.

    784-32-10 on 28x28x1 images: 25,450 parameters. It has no `"features"`
    layer: use it with logit methods or methods on `"embedding"`.
    """
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(32, activation="relu", name="embedding")(x)
    return keras.Model(inputs, _logits(x, num_classes), name="student_mlp")


def student_separable(input_shape, num_classes, width=32):
    """A MobileNet-style student for int8 edge export (`benchmarks/qat.py`).

    A 3x3 conv stem (`width / 2` filters), three separable blocks
    (depthwise 3x3 + BatchNorm + ReLU6, pointwise 1x1 + BatchNorm + ReLU6;
    `width`, `2 width` strided, `2 width` filters), a strided depthwise 3x3
    and a 1x1 conv of `4 width` ReLU6 maps (`"features"`), global average
    pooling (`"embedding"`) and the logits: 19,498 parameters on 32x32x3.

    Its BatchNormalization layers keep Keras' default momentum (0.99), as
    `keras.applications`' MobileNets do: the moving statistics that
    inference uses need a few hundred steps to catch up, and test accuracy
    stays near chance until then (Fashion-MNIST, 3,000 examples, batch 64:
    about 9 epochs). Train it for longer than that.
    """
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(width // 2, 3, padding="same", use_bias=False)(
        inputs
    )
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters, stride in ((width, 1), (2 * width, 2), (2 * width, 1)):
        x = keras.layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False
        )(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
        x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.Conv2D(4 * width, 1)(x)
    # A ReLU layer, not `activation="relu6"`: TFMOT quantizes only some
    # in-layer activations.
    x = keras.layers.ReLU(6.0, name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(
        inputs, _logits(x, num_classes), name="student_separable"
    )


def resnet20(input_shape, num_classes):
    """ResNet-20 for 32x32 images (He et al. 2016, section 4.2).

    A 3x3 conv (16 filters), then 3 stages of 3 basic blocks (two 3x3
    conv-BatchNorm pairs and a shortcut) with 16, 32 and 64 filters, the
    second and third stages starting with stride 2; global average pooling
    (`"embedding"`, `(batch, 64)`) and the logits. `"features"` is the last
    block's ReLU, `(batch, h / 4, w / 4, 64)`: 8x8 on CIFAR-10. 274,042
    parameters on 32x32x3 (272,474 trainable).

    Where a block changes the shape, the shortcut is a strided 1x1 conv with
    BatchNorm (the paper's option B; its CIFAR nets pad with zeros, option A):
    2,944 more parameters, and no Lambda layer, so the model builds the same
    in Keras 3 and tf_keras. The last BatchNorm of each block starts at zero
    scale (Goyal et al. 2017): every block starts as the identity, which
    helps short schedules. Convs have no bias (BatchNorm follows) and He
    normal initial weights. Expects inputs of a fixed scale, e.g. [0, 1]:
    BatchNorm after the first conv absorbs the offset and the scale.

    References:
        He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition.
        CVPR 2016. Goyal et al. Accurate, Large Minibatch SGD: Training
        ImageNet in 1 Hour. 2017.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, 16, 1, "stem")
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            last = stage == 2 and block == 2
            x = _basic_block(x, filters, strides, name, last)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, _logits(x, num_classes), name="resnet20")


def _conv_bn(x, filters, strides, name, kernel_size=3, zero_scale=False):
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    # momentum 0.9 (PyTorch's 0.1): running statistics that keep up with
    # the weights in a short schedule.
    return keras.layers.BatchNormalization(
        momentum=0.9,
        gamma_initializer="zeros" if zero_scale else "ones",
        name=f"{name}_bn",
    )(x)


def _basic_block(x, filters, strides, name, last):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, strides, f"{name}_shortcut", 1)
    y = _conv_bn(x, filters, strides, f"{name}_1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv_bn(y, filters, 1, f"{name}_2", zero_scale=True)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name="features" if last else f"{name}_relu2")(y)


MODELS = {
    "teacher_cnn": teacher_cnn,
    "student_cnn": student_cnn,
    "student_mlp": student_mlp,
    "student_separable": student_separable,
    "resnet20": resnet20,
}


def build_model(name, input_shape, num_classes):
    """Builds the model `name` of `MODELS` for the given images and classes.

    Args:
        name: one of `MODELS`: `"teacher_cnn"`, `"student_cnn"`,
            `"student_mlp"`, `"student_separable"`, `"resnet20"`.
        input_shape: image shape without the batch axis, `(h, w, channels)`.
        num_classes: number of classes, the width of the logits.

    Returns:
        A Functional `keras.Model` that outputs logits of shape
        `(batch, num_classes)`.

    Raises:
        ValueError: if `name` is not in `MODELS`, or the shape is not
            `(h, w, channels)`.
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model. Expected one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be an image shape (height, width, channels). "
            f"Received: input_shape={input_shape}"
        )
    return MODELS[name](input_shape, int(num_classes))
