"""Teacher and student models of the examples and benchmarks.

Small Functional CNNs and an MLP for 28x28 grey and 32x32 RGB images (NHWC),
built with the Keras that tfkd uses (Keras 3, or tf_keras with
`TF_USE_LEGACY_KERAS=1`): TFMOT's quantization-aware training needs Functional
or Sequential models. Every model outputs LOGITS (no softmax) and names the
layers that feature distillation methods tap:

- `"features"`: the last conv block's ReLU maps, `(batch, h, w, channels)`,
  with the same `h, w` in the teacher and the CNN student (the MLP has none);
- `"embedding"`: the penultimate dense layer, `(batch, width)`.

Example:
    >>> from examples import models
    >>> teacher = models.build_model("teacher_cnn", (28, 28, 1), 10)
    >>> student = models.build_model("student_mlp", (28, 28, 1), 10)
"""

from tfkd._keras import keras


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


MODELS = {
    "teacher_cnn": teacher_cnn,
    "student_cnn": student_cnn,
    "student_mlp": student_mlp,
}


def build_model(name, input_shape, num_classes):
    """Builds the model `name` of `MODELS` for the given images and classes.

    Args:
        name: one of `MODELS`: `"teacher_cnn"`, `"student_cnn"`,
            `"student_mlp"`.
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
