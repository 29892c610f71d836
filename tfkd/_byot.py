"""Be Your Own Teacher: auxiliary heads that the deepest head teaches.

`tfkd.self_distillation.DeepSelfDistillation` (public there) trains a
student together with classifier heads on named intermediate layers; the
student stays a plain Keras model without the heads, and the heads can be
kept as early-exit models.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfkd import _keras
from tfkd import _loss_scale
from tfkd._keras import keras
from tfkd.losses import _self
from tfkd.losses._base import check_positive


def _layer_output(student, name, what):
    try:
        return student.get_layer(name).output
    except ValueError:
        names = [layer.name for layer in student.layers]
        raise ValueError(
            f"Invalid value for argument `{what}`: the student "
            f"{student.name!r} has no layer {name!r}. Expected one of "
            f"{names}. Received: {what}={name!r}"
        ) from None


@_keras.register_serializable
class DeepSelfDistillation(keras.Model):
    """Be Your Own Teacher (Zhang et al. 2019): heads on intermediate layers.

    Each layer named in `layers` gets a head: global average pooling (for
    maps), a ReLU bottleneck of the width of `feature_layer`'s output (the
    student's penultimate features), and a classifier. The student's own
    output is the deepest head; it teaches the shallow ones, as the
    authors' `train.py`, per example:

    ```
    loss = (1 - alpha) * (CE(y, s) + sum_i CE(y, h_i))
         + alpha * sum_i byot_kd_loss(s, h_i, T)
         + beta * sum_i byot_feature_loss(f, f_i)
    ```

    (`f`: the student's `feature_layer` output, `f_i`: head `i`'s
    bottleneck; without `feature_layer` the bottleneck is 64 wide and
    there is no feature term). Nothing flows back from the shallow heads'
    targets into the deepest head (the authors' `.detach()`). Losses are
    averaged over the global batch (`tf.distribute`-exact). `compile`
    takes the optimizer and metrics (of the student's output); the
    hard-label loss is sparse categorical cross-entropy from logits.

    `call` and `predict` are the student's; `student` is the plain model to
    save or export (no head); `early_exits()` gives one model per head.
    The wrapper saves and loads as a whole too (`save`, `load_model`: the
    student, the heads, the settings and the optimizer's state), to resume
    training.

    Args:
        student: a Functional (or Sequential) Keras model that outputs
            logits.
        layers: names of the intermediate layers that get a head.
        feature_layer: name of the student's penultimate layer, for the
            feature hints. Defaults to `None` (no feature term).
        temperature: `T` of the KD term. Defaults to `3.0` (the authors').
        alpha: weight of the KD term against the cross-entropies, in
            [0, 1]. Defaults to `0.1` (the authors').
        beta: weight of the feature hints. Defaults to `1e-6` (the
            authors', whose feature loss sums over the batch: with the
            batch mean here, multiply by the batch size to match).

    Raises:
        ValueError: no layer, an unknown layer name, invalid weights.

    Example:
        >>> byot = tfkd.self_distillation.DeepSelfDistillation(
        ...     student, ["block1", "block2"], feature_layer="embedding")
        >>> byot.compile("adam", metrics=["accuracy"])
        >>> byot.fit(train, epochs=10)
        >>> byot.student.save("student.keras")
        >>> exits = byot.early_exits()

    References:
        Zhang, Song, Gao, Chen, Bao, Ma. "Be Your Own Teacher: Improve the
        Performance of Convolutional Neural Networks via Self
        Distillation", ICCV 2019. arXiv:1905.08094.
    """

    def __init__(
        self,
        student: keras.Model,
        layers: list[str],
        *,
        feature_layer: str | None = None,
        temperature: float = 3.0,
        alpha: float = 0.1,
        beta: float = 1e-6,
        name: str = "deep_self_distillation",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        if isinstance(layers, str) or not layers:
            raise ValueError(
                "Invalid value for argument `layers`: expected a non-empty "
                f"list of layer names. Received: layers={layers!r}"
            )
        if not getattr(student, "inputs", None) or not getattr(
            student, "outputs", None
        ):
            raise ValueError(
                "DeepSelfDistillation needs a Functional or Sequential "
                f"student built on `keras.Input`. Received: {student!r}"
            )
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        if self.alpha > 1:
            raise ValueError(
                "Invalid value for argument `alpha`. Expected a weight in "
                f"[0, 1]. Received: alpha={alpha!r}"
            )
        self.beta = check_positive("beta", beta, allow_zero=True)
        self.student = student
        self.layer_names = list(layers)
        self.feature_layer = feature_layer
        final = student.outputs[0]
        classes = final.shape[-1]
        feature = (
            None
            if feature_layer is None
            else _layer_output(student, feature_layer, "feature_layer")
        )
        width = 64 if feature is None else feature.shape[-1]
        logits, features = [], []
        for layer_name in self.layer_names:
            x = _layer_output(student, layer_name, "layers")
            prefix = f"{layer_name}_head"
            if len(x.shape) == 4:
                x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}_pool")(
                    x
                )
            elif len(x.shape) > 2:
                x = keras.layers.Flatten(name=f"{prefix}_flatten")(x)
            bottleneck = keras.layers.Dense(
                width, activation="relu", name=f"{prefix}_bottleneck"
            )(x)
            features.append(bottleneck)
            logits.append(
                keras.layers.Dense(
                    classes, name=f"{prefix}_logits", dtype="float32"
                )(bottleneck)
            )
        self._feature = feature is not None
        self._head_logits = logits
        self.network = keras.Model(
            student.inputs,
            [final, *logits, *([feature, *features] if self._feature else [])],
            name=f"{student.name}_with_heads",
        )
        self._total_tracker = keras.metrics.Mean(name="loss")
        # Built with its network, so that `save` keeps the weights and a
        # loaded wrapper rebuilds its optimizer's state.
        self.built = True

    @property
    def metrics(self) -> list:
        return [self._total_tracker] + _keras.compiled_metrics(self)

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.student(inputs, training=training)

    def early_exits(self) -> list[keras.Model]:
        """One model per head, `inputs -> head logits`, sharing the
        student's (and the head's) weights; in `layers` order."""
        return [
            keras.Model(self.student.inputs, logits, name=f"{name}_exit")
            for name, logits in zip(self.layer_names, self._head_logits)
        ]

    def compile_from_config(self, config: dict) -> None:
        """Recompiles a loaded wrapper; builds the optimizer on the
        variables that `train_step` updates, in their order, so that its
        saved state loads."""
        deserialize = keras.saving.deserialize_keras_object
        self.compile(
            **{key: deserialize(value) for key, value in config.items()}
        )
        _keras.build_optimizer(self.optimizer, self.network.trainable_variables)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "layers": list(self.layer_names),
            "feature_layer": self.feature_layer,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
        }

    @classmethod
    def from_config(
        cls, config: dict, custom_objects: dict | None = None
    ) -> DeepSelfDistillation:
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"], custom_objects=custom_objects
        )
        return cls(**config)

    def _per_example(self, y, outputs):
        count = len(self.layer_names)
        final, heads = outputs[0], outputs[1 : 1 + count]
        y = tf.reshape(tf.cast(y, tf.int32), [-1])

        def ce(logits):
            return tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, tf.cast(logits, tf.float32)
            )

        hard = ce(final) + tf.add_n([ce(h) for h in heads])
        kd = tf.add_n(
            [
                _self.byot_kd_loss_per_example(
                    final, h, temperature=self.temperature
                )
                for h in heads
            ]
        )
        total = (1.0 - self.alpha) * hard + self.alpha * kd
        if self._feature:
            feature, head_features = outputs[1 + count], outputs[2 + count :]
            hints = tf.add_n(
                [
                    _self.byot_feature_loss_per_example(feature, f)
                    for f in head_features
                ]
            )
            total += self.beta * hints
        return total

    def _loss(self, y, outputs, sample_weight):
        per_example = self._per_example(y, outputs)
        if sample_weight is not None:
            per_example *= tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        loss = tf.nn.compute_average_loss(per_example)
        regularization = self.student.losses + self.network.losses
        if regularization:
            loss += tf.nn.scale_regularization_loss(tf.add_n(regularization))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._total_tracker.update_state(
            loss * replicas, sample_weight=tf.shape(per_example)[0]
        )
        return loss

    def train_step(self, data: Any) -> dict:
        x, y, sample_weight = _keras.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            outputs = self.network(x, training=True)
            loss = self._loss(y, outputs, sample_weight)
            scaled = _keras.scale_loss_for_optimizer(self.optimizer, loss)
        variables = self.network.trainable_variables
        gradients = tape.gradient(scaled, variables)
        gradients = _keras.unscale_gradients(self.optimizer, gradients)
        # Every replica skips an overflowing step, or none.
        gradients = _loss_scale.agree_on_finite(self.optimizer, gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._logs(self.compute_metrics(x, y, outputs[0], sample_weight))

    def test_step(self, data: Any) -> dict:
        x, y, sample_weight = _keras.unpack_x_y_sample_weight(data)
        outputs = self.network(x, training=False)
        self._loss(y, outputs, sample_weight)
        return self._logs(self.compute_metrics(x, y, outputs[0], sample_weight))

    def _logs(self, logs):
        logs = dict(logs)
        logs["loss"] = self._total_tracker.result()
        return logs
