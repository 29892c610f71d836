"""`tfkd.Distiller`: train a student from a frozen teacher with `fit`."""

import tensorflow as tf

from tfkd import _keras
from tfkd import _objective
from tfkd import _taps
from tfkd import _validation
from tfkd import teachers
from tfkd._keras import keras
from tfkd.losses._base import check_positive


@_keras.register_serializable
class Distiller(keras.Model):
    """Trains a student to match a frozen teacher, with `compile` and `fit`.

    ```
    loss = alpha * student_loss(y, s) + (1 - alpha) * distillation_loss(t, s)
    ```

    where `student_loss` is the hard-label loss given to `compile(loss=...)`
    and `distillation_loss` defaults to Hinton KD,
    `T^2 * KL(softmax(t/T) || softmax(s/T))`, computed from log-softmax.

    The teacher is frozen: it is called with `training=False`, its weights are
    not trainable and `fit` changes neither them nor its BatchNorm statistics.
    Both models output logits (no final softmax). `call` and `predict` are the
    student's, and `distiller.student` is a plain Keras model to save or export.

    Data may be `(x, y)`, `(x, y, sample_weight)` or `x` alone (an unlabelled
    transfer set: compile without `loss`, `alpha=0`). Sample weights weigh both
    terms. Losses are summed per replica and divided by the global batch size,
    so under `tf.distribute` N replicas train like one device with the same
    global batch; all loss maths runs in float32 under mixed precision.

    Args:
        teacher: the trained teacher, a Keras model that outputs logits; or
            several, as a list (logits averaged) or a `{model: weight}` dict
            (weighted average), see `tfkd.teachers.ensemble`.
        student: the student, a Keras model with the teacher's output shape.
        distillation_loss: a `tfkd.losses` method, or a list of methods or
            `(method, weight)` tuples whose weighted sum is the distillation term.
            Defaults to `tfkd.losses.KD(temperature=temperature)`.
        alpha: weight of the student's hard-label loss, in `[0, 1]`. Defaults to
            `0.1`. A variable: `tfkd.callbacks` can schedule it.
        temperature: temperature of the default KD loss. Defaults to `4.0`. Set it
            on the method itself when passing `distillation_loss`.
        **kwargs: forwarded to `keras.Model` (e.g. `name`).

    Example:
        >>> distiller = tfkd.Distiller(teacher=teacher, student=student,
        ...                            temperature=4.0, alpha=0.1)
        >>> distiller.compile(
        ...     optimizer="adam",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...     metrics=["accuracy"])
        >>> distiller.fit(train_data, validation_data=val_data, epochs=10)
        >>> distiller.student.save("student.keras")

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network",
        2015. arXiv:1503.02531.
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_loss=None,
        *,
        alpha=0.1,
        temperature=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "distiller")
        super().__init__(**kwargs)
        if isinstance(teacher, (list, tuple, dict)):
            teacher = teachers.ensemble(teacher)
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model):
                raise TypeError(
                    f"`{role}` must be a `{_keras.KERAS_NAME}.Model`. Received: "
                    f"{role}={model!r} of type {type(model).__name__}. (Models built "
                    "with the other Keras cannot be mixed: tfkd uses "
                    f"{_keras.KERAS_NAME}, see TF_USE_LEGACY_KERAS.)"
                )
        alpha = check_positive("alpha", alpha, allow_zero=True)
        if alpha > 1:
            raise ValueError(
                f"`alpha` must be in [0, 1]. Received: alpha={alpha}"
            )
        if temperature is not None:
            check_positive("temperature", temperature)
        self._loss_entries = _validation.resolve_distillation_losses(
            distillation_loss, temperature
        )
        _validation.check_outputs_logits(teacher, "teacher")
        _validation.check_outputs_logits(student, "student")

        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
        self.alpha = self._scalar_weight("alpha", alpha)
        self.distillation_losses = [loss for loss, _ in self._loss_entries]
        self.loss_weights = [
            self._scalar_weight(f"loss_weight_{i}", weight)
            for i, (_, weight) in enumerate(self._loss_entries)
        ]

        self._teacher_taps = sorted(
            {
                loss.teacher_layer
                for loss in self.distillation_losses
                if loss.teacher_layer is not None
            }
        )
        self._student_taps = sorted(
            {
                loss.student_layer
                for loss in self.distillation_losses
                if loss.student_layer is not None
            }
        )
        self._teacher_tapped = _taps.tapped_model(
            teacher, self._teacher_taps, "teacher"
        )
        self._student_tapped = _taps.tapped_model(
            student, self._student_taps, "student"
        )
        self._check_output_shapes()
        self.adapters = _taps.make_adapters(
            teacher, student, self.distillation_losses
        )

        self._loss_tracker_total = keras.metrics.Mean(name="loss")
        self._student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self._distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self._student_loss_fn = None
        # Nothing is left to build once both models are: mark the Distiller
        # built so that weight checkpoints (BackupAndRestore) can save it.
        if self.teacher.built and self.student.built:
            self.built = True

    # Construction helpers.

    def _scalar_weight(self, name, value):
        weight = self.add_weight(
            name=name,
            shape=(),
            trainable=False,
            initializer="zeros",
            dtype="float32",
        )
        weight.assign(value)
        return weight

    def _check_output_shapes(self):
        shapes = []
        for model in (self.teacher, self.student):
            outputs = getattr(model, "outputs", None)
            if outputs and len(outputs) > 1:
                raise ValueError(
                    f"{model.name!r} has {len(outputs)} outputs; the Distiller needs "
                    "one logits output per model. Wrap the model to return only its "
                    "logits."
                )
            shapes.append(tuple(outputs[0].shape) if outputs else None)
        if None not in shapes:
            self._check_logits_shapes(*shapes)

    def _check_logits_shapes(self, teacher_shape, student_shape):
        if tuple(teacher_shape)[1:] != tuple(student_shape)[1:]:
            raise ValueError(
                f"Teacher {self.teacher.name!r} outputs shape {tuple(teacher_shape)} "
                f"but student {self.student.name!r} outputs shape "
                f"{tuple(student_shape)}. Distillation compares them class by "
                "class: give the student the teacher's number of outputs."
            )

    # Keras API.

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training; `loss` is the student's hard-label loss.

        Args:
            optimizer: as in `keras.Model.compile`.
            loss: the student's hard-label loss on logits: a `keras.losses.Loss`
                with `from_logits=True`, a per-example callable, or one of
                `"sparse_categorical_crossentropy"`, `"categorical_crossentropy"`,
                `"binary_crossentropy"` (taken with `from_logits=True`). May be
                `None` only with `alpha=0` (pure distillation, unlabelled data).
            metrics: metrics of the student's logits against the labels.
            **kwargs: forwarded to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `weighted_metrics`, ...).
        """
        if "loss_weights" in kwargs:
            raise ValueError(
                "`loss_weights` is not used by the Distiller: weigh the student "
                "loss with `alpha` and the methods with `(method, weight)` tuples."
            )
        self._student_loss_fn = _validation.resolve_student_loss(loss)
        if self._student_loss_fn is None and float(self.alpha.numpy()) > 0:
            raise ValueError(
                f"alpha={float(self.alpha.numpy()):g} weighs a hard-label student "
                "loss, but `compile` got no `loss`. Pass e.g. "
                "`loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)`"
                ", or use `alpha=0.0` for pure distillation."
            )
        super().compile(
            optimizer=optimizer, loss=None, metrics=metrics, **kwargs
        )
        self._compile_student(optimizer, loss, metrics)

    def _compile_student(self, optimizer, loss, metrics):
        """Compiles an uncompiled student so `student.evaluate` just works.

        It gets the hard-label loss, its own copies of the metrics and a fresh
        optimizer of the same configuration (never the Distiller's).
        """
        student = self.student
        if getattr(
            student, "compiled", getattr(student, "_is_compiled", False)
        ):
            return
        if isinstance(loss, str):
            loss = _validation.STUDENT_LOSSES[loss]()
        if not isinstance(optimizer, str):
            optimizer = type(optimizer).from_config(optimizer.get_config())
        student.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=[
                _validation.copy_metric(metric) for metric in metrics or []
            ],
        )

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; adds TFMOT's `UpdatePruningStep` callback when
        the student comes from `tfkd.quantization.prune` and it is missing."""
        from tfkd import quantization

        callbacks = quantization.pruning_callbacks(self, callbacks)
        return super().fit(*args, callbacks=callbacks, **kwargs)

    @property
    def metrics(self):
        trackers = [
            self._loss_tracker_total,
            self._student_loss_tracker,
            self._distillation_loss_tracker,
        ]
        if _keras.IS_LEGACY:
            compiled = getattr(self, "compiled_metrics", None)
            return trackers + (compiled.metrics if compiled is not None else [])
        compiled = getattr(self, "_compile_metrics", None)
        return trackers + ([compiled] if compiled is not None else [])

    def call(self, inputs, training=False):
        inputs, _ = self._split_inputs(inputs)
        return self.student(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = _keras.unpack_x_y_sample_weight(data)
        x, teacher_outputs = self._split_inputs(x)
        if teacher_outputs is None:
            teacher_outputs = self.teacher_outputs(x)
        with tf.GradientTape() as tape:
            student_outputs = self._forward(
                self.student, self._student_tapped, x, training=True
            )
            loss = self._compute_losses(
                y,
                sample_weight,
                teacher_outputs,
                student_outputs,
                training=True,
            )
            scaled_loss = _keras.scale_loss_for_optimizer(self.optimizer, loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        gradients = _keras.unscale_gradients(self.optimizer, gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._metrics_result(x, y, student_outputs[0], sample_weight)

    def test_step(self, data):
        x, y, sample_weight = _keras.unpack_x_y_sample_weight(data)
        x, teacher_outputs = self._split_inputs(x)
        if teacher_outputs is None:
            teacher_outputs = self.teacher_outputs(x)
        student_outputs = self._forward(
            self.student, self._student_tapped, x, training=False
        )
        self._compute_losses(
            y, sample_weight, teacher_outputs, student_outputs, training=False
        )
        return self._metrics_result(x, y, student_outputs[0], sample_weight)

    @property
    def teacher_taps(self):
        """Names of the teacher layers that the methods read, sorted."""
        return list(self._teacher_taps)

    @property
    def base_loss_weights(self):
        """The methods' weights as configured (schedules scale these)."""
        return tuple(weight for _, weight in self._loss_entries)

    def teacher_outputs(self, x):
        """The teacher's `(logits, {layer_name: features})` for inputs `x`.

        One forward pass in inference mode, with the gradient stopped. This is
        what `tfkd.cache_teacher_outputs` stores.
        """
        logits, features = self._forward(
            self.teacher, self._teacher_tapped, x, training=False
        )
        return tf.nest.map_structure(tf.stop_gradient, (logits, features))

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "teacher": serialize(self.teacher),
            "student": serialize(self.student),
            "distillation_loss": [
                (serialize(loss), float(weight.numpy()))
                for loss, weight in zip(
                    self.distillation_losses, self.loss_weights
                )
            ],
            "alpha": float(self.alpha.numpy()),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for key in ("teacher", "student"):
            config[key] = deserialize(
                config[key], custom_objects=custom_objects
            )
        config["distillation_loss"] = [
            (deserialize(loss, custom_objects=custom_objects), weight)
            for loss, weight in config["distillation_loss"]
        ]
        return cls(**config)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras 3 only: builds metrics/optimizer from one replica's batch.

        Keras 3.15 first reduces a distributed batch with
        `strategy.reduce("MEAN", ...)`, which fails under
        `MultiWorkerMirroredStrategy` ("unsupported type PerReplica"). Only the
        shapes matter here, and one replica's batch has them.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is not None and iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: (
                        strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues)
                        else value
                    ),
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    # Internals.

    _split_inputs = staticmethod(teachers.split_inputs)

    @staticmethod
    def _forward(model, tapped, x, training):
        """Returns `(logits, {layer_name: features})` from ONE forward pass."""
        return tapped(x, training=training)

    def _compute_losses(
        self, y, sample_weight, teacher_outputs, student_outputs, training
    ):
        """Returns this replica's share of the total loss (see
        `tfkd._objective`) and updates the loss trackers."""
        result = _objective.objective(
            self, y, sample_weight, teacher_outputs, student_outputs, training
        )
        for tracker, value in (
            (self._loss_tracker_total, result.total),
            (self._student_loss_tracker, result.student),
            (self._distillation_loss_tracker, result.distillation),
        ):
            tracker.update_state(value, sample_weight=result.batch_size)
        return result.share

    def _metrics_result(self, x, y, student_logits, sample_weight):
        if y is not None:
            logs = self.compute_metrics(x, y, student_logits, sample_weight)
        else:
            logs = self.get_metrics_result()
        if not _keras.IS_LEGACY and _objective.multi_worker():
            # Keras 3.15 reduces step outputs across workers with
            # `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars.
            # Epoch logs are recomputed from the (synchronised) metrics.
            logs = {key: tf.reshape(value, [1]) for key, value in logs.items()}
        return logs
