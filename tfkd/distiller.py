"""`tfkd.Distiller`: train a student from a frozen teacher with `fit`.

Over 400 lines on purpose: the one public class, Keras' `Model` API that it
overrides (`compile`, `fit`, `train_step`, `test_step`, configs) and the
docs users read with `help()` (a quarter of the file). The rest is Keras
glue; the work is in functions of their own modules: the objective
(`_objective.compute`), the terms and their defaults (`_methods.Term`), the
output pairing (`_pairing`), `compile`'s checks (`_compiling`), argument
checks (`_validation`), augmentation (`_augment`), layer taps (`_taps`),
saving (`_saving`), the teacher's logs (`_teacher_logs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tfkd import _augment
from tfkd import _cache_format
from tfkd import _compiling
from tfkd import _keras
from tfkd import _loss_scale
from tfkd import _methods
from tfkd import _objective
from tfkd import _pairing
from tfkd import _saving
from tfkd import _self_teacher
from tfkd import _taps
from tfkd import _teacher_logs
from tfkd import _validation
from tfkd import quantization
from tfkd import teachers
from tfkd._keras import keras
from tfkd.losses._base import check_positive


@_keras.register_serializable
class Distiller(_keras.MultiWorkerSafe, keras.Model):
    """Trains a student to match a frozen teacher, with `compile` and `fit`.

    ```
    loss = alpha * student_loss(y, s) + (1 - alpha) * distillation_loss(t, s)
    ```

    where `student_loss` is the hard-label loss given to `compile(loss=...)`
    and `distillation_loss` defaults to DIST (Huang et al. 2022): Pearson
    correlations of the softmax predictions, per example across classes and
    per class across the batch. `temperature=T` asks for Hinton KD instead,
    `T^2 * KL(softmax(t/T) || softmax(s/T))`, computed from log-softmax.
    The defaults come from `benchmarks/defaults.py` (docs/benchmarks.md):
    tfkd 0.1's Hinton KD at `T = 4` made the student worse in most of the
    settings measured there, DIST gained in nearly all.

    The teacher is frozen: it is called with `training=False`, its weights are
    not trainable and `fit` changes neither them nor its BatchNorm statistics.
    Both models output logits (no final softmax). `call` and `predict` are the
    student's, and `distiller.student` is a plain Keras model to save or export.

    Data may be `(x, y)`, `(x, y, sample_weight)` or `x` alone (an unlabelled
    transfer set: compile without `loss`, `alpha=0`). Sample weights weigh both
    terms. Losses are summed per replica and divided by the global batch size,
    so under `tf.distribute` N replicas train like one device with the same
    global batch; all loss maths runs in float32 under mixed precision.

    Training batches may be augmented, once, before both models (`augment`,
    `mixup`), so that the teacher scores the very view the student learns
    from ("function matching", Beyer et al.). With `validation_data`, `fit`
    also logs the teacher's validation loss and metrics, `val_teacher_loss`,
    `val_teacher_accuracy`, ..., computed once per `fit` call: a student
    that nears them is held back by its teacher.

    Args:
        teacher: the trained teacher, a Keras model that outputs logits; or
            several, as a list (logits averaged) or a `{model: weight}` dict
            (weighted average), see `tfkd.teachers.ensemble`; or `None`
            when every method reads no teacher (`tfkd.losses.TeacherFreeKD`);
            or the student's own `tfkd.teachers.moving_average` or
            `snapshot` (docs/self_distillation.md).
        student: the student, a Keras model with the teacher's output shape.
        distillation_loss: a `tfkd.losses` method, or a list of methods or
            `(method, weight)` tuples whose weighted sum is the distillation
            term. Defaults to `tfkd.losses.DIST()`, or
            `tfkd.losses.KD(temperature=temperature)` when `temperature` is
            given. On a binary or multi-label head (one logit, or a
            `binary_crossentropy` loss) the default is a sigmoid KD,
            `KD(temperature=4.0, activation="sigmoid")` (or at
            `temperature`). On a regression output (compiled with a Keras
            regression loss: `"mse"`, `"mae"`, `keras.losses.Huber()`, ...)
            it is `tfkd.losses.OutputMatching` with that loss: the student's
            outputs regress on the teacher's.
        alpha: weight of the student's hard-label loss, in `[0, 1]`. Defaults to
            `0.1`. A variable: `tfkd.callbacks` can schedule it.
        temperature: Hinton KD at this temperature (the keras.io recipe)
            instead of the default method. Defaults to `None`. Set the
            temperature on the method itself when passing
            `distillation_loss`.
        augment: augmentation of each training batch, applied once, before
            both models, which then see the same view: a Keras layer or
            model (e.g. `keras.Sequential([keras.layers.RandomFlip(
            "horizontal"), keras.layers.RandomTranslation(0.1, 0.1)])`,
            called with `training=True`) or a function `x -> x`. `evaluate`
            and `predict` do not augment. A layer is saved with the
            Distiller; a function is saved by name, as Keras saves a custom
            loss function: load it with `custom_objects={name: function}`
            or register it with `keras.saving.register_keras_serializable`.
            Not with cached teacher outputs. Defaults to `None`.
        mixup: the `alpha` of mixup, a float `>= 0` (`0` is off; 0.2 to 1
            are usual). Each training batch (each replica's, under
            `tf.distribute`) draws `lam ~ Beta(alpha, alpha)` and a
            permutation `p` of its examples; both models see
            `lam * x + (1 - lam) * x[p]` (after `augment`). The hard-label
            loss is `lam * loss(y, s) + (1 - lam) * loss(y[p], s)`, sample
            weights permuted with the labels; the distillation term (and
            a method that reads labels, such as DKD) takes the mixed batch
            with `y` and the sample weights as they are; the compiled
            metrics compare the student's outputs with `y`. Not with cached
            teacher outputs. Defaults to `0.0`.
        **kwargs: forwarded to `keras.Model` (e.g. `name`).

    Raises:
        TypeError: a model, `augment` or `mixup` of the wrong type.
        ValueError: invalid settings (`alpha`, `temperature`, `mixup`),
            teacher and student that do not pair up, a frozen student.

    Warns:
        UserWarning: the student holds random augmentation layers
            (`RandomFlip`, `RandomCrop`, ...), which the teacher never sees;
            move them into `augment=`.

    Example:
        >>> distiller = tfkd.Distiller(teacher=teacher, student=student)
        >>> distiller.compile(
        ...     optimizer="adam",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(
        ...         from_logits=True),
        ...     metrics=["accuracy"])
        >>> distiller.fit(train_data, validation_data=val_data, epochs=10)
        >>> distiller.student.save("student.keras")
        >>> augment = keras.Sequential(
        ...     [keras.layers.RandomFlip("horizontal"),
        ...      keras.layers.RandomTranslation(0.1, 0.1)])
        >>> patient = tfkd.Distiller(teacher, student, augment=augment,
        ...                          mixup=1.0)

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network",
        2015. arXiv:1503.02531.
        Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger
        Teacher", NeurIPS 2022. arXiv:2205.10536.
        Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov. "Knowledge
        distillation: A good teacher is patient and consistent", CVPR 2022.
        arXiv:2106.05237.
        Zhang, Cisse, Dauphin, Lopez-Paz. "mixup: Beyond Empirical Risk
        Minimization", ICLR 2018. arXiv:1710.09412.
    """

    def __init__(
        self,
        teacher: keras.Model
        | None
        | Sequence[keras.Model | tuple[keras.Model, float]]
        | dict[keras.Model, float],
        student: keras.Model,
        distillation_loss: Any = None,
        *,
        alpha: float = 0.1,
        temperature: float | None = None,
        augment: keras.layers.Layer | Callable[..., Any] | None = None,
        mixup: float = 0.0,
        **kwargs: Any,
    ):
        kwargs.setdefault("name", "distiller")
        super().__init__(**kwargs)
        if teacher is None:
            teacher = _self_teacher.no_teacher(student, distillation_loss)
        if isinstance(teacher, (list, tuple, dict)):
            teacher = teachers.ensemble(teacher)
        _validation.check_models(teacher, student)
        alpha = _validation.check_alpha(alpha)
        if temperature is not None:
            check_positive("temperature", temperature)
        augment = _augment.check_augment(augment)
        mixup = _augment.check_mixup(mixup)
        self._pairing = _pairing.OutputPairing(teacher, student)
        self._output_names = self._pairing.names
        terms = _methods.resolve_distillation_losses(
            distillation_loss, temperature, self._output_names
        )
        _validation.check_outputs_logits(teacher, "teacher")
        _validation.check_outputs_logits(student, "student")

        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
        _self_teacher.check(self)
        _augment.warn_random_layers(student)
        if isinstance(augment, keras.layers.Layer):
            # Augmentation does not learn: the step applies it before the
            # gradient tape.
            augment.trainable = False
            _augment.build(augment, student)
        self.augment = augment
        self.mixup = mixup
        if student.built and not student.trainable_weights:
            raise ValueError(
                f"The student {student.name!r} has no trainable weights (is it "
                "frozen with `trainable=False`, or a teacher?). Pass a "
                "trainable student."
            )
        self._base_alpha = alpha
        self.alpha = self._scalar_weight("alpha", alpha)

        self._teacher_taps = _taps.layer_names(terms, "teacher_layer")
        self._student_taps = _taps.layer_names(terms, "student_layer")
        self._teacher_tapped = _taps.tapped_model(
            teacher, self._teacher_taps, "teacher"
        )
        self._student_tapped = _taps.tapped_model(
            student, self._student_taps, "student"
        )
        shapes = self._pairing.static_shapes()
        # A one-logit head is binary (its softmax would be constant), unless
        # `compile` gives it a regression loss.
        self._one_logit = [s is not None and s[-1] == 1 for s in shapes]
        methods = [term.method for term in terms]
        _taps.check_feature_ranks(teacher, student, methods)
        adapters = _taps.make_adapters(teacher, student, methods)
        self._terms = [
            dataclasses.replace(
                term,
                variable=self._scalar_weight(f"loss_weight_{i}", term.weight),
                adapter=adapter,
            )
            for i, (term, adapter) in enumerate(zip(terms, adapters))
        ]
        # Tracked here, so that the adapters train and save.
        self.adapters = adapters
        self._apply_output_defaults([None] * len(self._output_names))
        _methods.check_class_logits(self._terms, shapes, self._output_names)

        # The means of the total, hard-label and distillation terms.
        self._loss_trackers = [
            keras.metrics.Mean(name=name)
            for name in ("loss", "student_loss", "distillation_loss")
        ]
        self._student_loss_fns = [None] * len(self._output_names)
        self._compile_arguments = None
        # Nothing is left to build once both models are: mark the Distiller
        # built so that weight checkpoints (BackupAndRestore) can save it.
        if self.teacher.built and self.student.built:
            self.built = True

    # Construction helpers.

    def _apply_output_defaults(self, losses):
        """Gives each default term the default method of its output's kind
        (its compiled loss `losses[index]`, its width:
        `_methods.output_kind`)."""
        kinds = [
            _methods.output_kind(loss, one_logit)
            for loss, one_logit in zip(losses, self._one_logit)
        ]
        self._terms = _methods.with_output_defaults(self._terms, kinds)

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

    @property
    def distillation_losses(self) -> list:
        """The methods of the distillation terms, in order."""
        return [term.method for term in self._terms]

    @property
    def loss_weights(self) -> list:
        """The terms' weights, float32 variables that schedules assign."""
        return [term.variable for term in self._terms]

    @property
    def base_alpha(self) -> float:
        """`alpha` as configured (a schedule may change `distiller.alpha`)."""
        return self._base_alpha

    # Keras API.

    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "rmsprop",
        loss: Any = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """Configures training; `loss` is the student's hard-label loss.

        Args:
            optimizer: as in `keras.Model.compile`.
            loss: the student's hard-label loss on logits: a `keras.losses.Loss`
                with `from_logits=True`, a per-example callable, or one of
                `"sparse_categorical_crossentropy"`,
                `"categorical_crossentropy"`, `"binary_crossentropy"` (taken
                with `from_logits=True`), or a regression loss (`"mse"`,
                `"mae"`, `"huber"`, `"log_cosh"`, `"msle"`, their long
                names, or instances). For multi-output models: one loss
                for every output, or a list or dict with one per output (None
                skips an output), as in Keras. May be `None` only with
                `alpha=0` (pure distillation). A binary loss makes the default
                KD a sigmoid (Bernoulli) KD; a regression loss makes the
                default method output matching with that loss.
            metrics: metrics of the student's outputs against the labels (per
                output as in `keras.Model.compile`).
            **kwargs: forwarded to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `weighted_metrics`, ...).
        """
        self._student_loss_fns = _compiling.student_losses(
            loss, self._output_names, float(self.alpha.numpy()), kwargs
        )
        self._apply_output_defaults(
            _validation.losses_per_output(loss, self._output_names)
        )
        self._compile_arguments = _compiling.kept_arguments(
            loss, metrics, kwargs
        )
        if len(self._output_names) > 1:
            # Keras maps per-output metrics by these names.
            self.output_names = list(self._output_names)
        super().compile(
            optimizer=optimizer, loss=None, metrics=metrics, **kwargs
        )
        _compiling.compile_student(self.student, optimizer, loss, metrics)

    def get_compile_config(self) -> dict | None:
        """What `compile` got, so that `keras.models.load_model` recompiles
        the Distiller (and then restores its optimizer's state)."""
        return _compiling.compile_config(self, self._compile_arguments)

    def compile_from_config(self, config: dict) -> None:
        """Recompiles from `get_compile_config()`; builds the optimizer so
        that its saved state (iterations, moments) can be loaded."""
        deserialize = keras.saving.deserialize_keras_object
        self.compile(
            **{key: deserialize(value) for key, value in config.items()}
        )
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(
        self,
        *args: Any,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        **kwargs: Any,
    ) -> keras.callbacks.History:
        """`keras.Model.fit`, plus two callbacks.

        With `validation_data`, the teacher's validation loss and metrics
        join the logs as `val_teacher_*` (see `tfkd._teacher_logs`). And
        TFMOT's `UpdatePruningStep` is added when the student comes from
        `tfkd.quantization.prune` and it is missing. Data made by
        `tfkd.cache_teacher_outputs` is checked against this Distiller
        first (its teacher, tapped layers and top-k), from its element spec.
        """
        _cache_format.check_data(
            self,
            args[0] if args else kwargs.get("x"),
            kwargs.get("validation_data"),
        )
        callbacks = quantization.pruning_callbacks(self, callbacks)
        callbacks = _self_teacher.callbacks(self, callbacks)
        teacher_logs = _teacher_logs.TeacherValidation.for_fit(self, kwargs)
        if teacher_logs is not None and not _self_teacher.state(self.teacher):
            # First, so that the callbacks after it (History, CSVLogger,
            # the progress bar) see its logs.
            callbacks = [teacher_logs] + callbacks
        return super().fit(*args, callbacks=callbacks, **kwargs)

    @property
    def metrics(self) -> list:
        return list(self._loss_trackers) + _keras.compiled_metrics(self)

    def call(self, inputs: Any, training: bool = False) -> Any:
        inputs, _ = self._split_inputs(inputs)
        return self.student(inputs, training=training)

    def train_step(self, data: Any) -> dict:
        x, y, sample_weight = _keras.unpack_x_y_sample_weight(data)
        x, teacher_outputs = _cache_format.checked_split(self, x)
        x, mix = _augment.augment_batch(
            self.augment,
            self.mixup,
            x,
            cached=teacher_outputs is not None,
            models=(self.student, self.teacher),
        )
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
                mix=mix,
            )
            scaled_loss = _keras.scale_loss_for_optimizer(self.optimizer, loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        gradients = _keras.unscale_gradients(self.optimizer, gradients)
        # Every replica skips an overflowing step, or none (Keras 3 asks
        # replica 0 only).
        gradients = _loss_scale.agree_on_finite(self.optimizer, gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        _self_teacher.after_step(self)
        return self._metrics_result(x, y, student_outputs[0], sample_weight)

    def test_step(self, data: Any) -> dict:
        x, y, sample_weight = _keras.unpack_x_y_sample_weight(data)
        x, teacher_outputs = _cache_format.checked_split(self, x)
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
    def teacher_taps(self) -> list[str]:
        """Names of the teacher layers that the methods read, sorted."""
        return list(self._teacher_taps)

    @property
    def base_loss_weights(self) -> tuple[float, ...]:
        """The methods' weights as configured (schedules scale these)."""
        return tuple(term.weight for term in self._terms)

    def teacher_outputs(self, x: Any) -> tuple[Any, dict[str, tf.Tensor]]:
        """The teacher's `(outputs, {layer_name: features})` for inputs `x`.

        One forward pass in inference mode, with the gradient stopped. This is
        what `tfkd.cache_teacher_outputs` stores.
        """
        _validation.check_single_input(self.teacher, x, "teacher")
        outputs, features = self._teacher_tapped(x, training=False)
        return tf.nest.map_structure(tf.stop_gradient, (outputs, features))

    def save(self, filepath: Any, *args: Any, **kwargs: Any) -> None:
        """Keras' `save`, through a temporary file renamed over `filepath`.

        A save that fails (an object that cannot be serialized, a full
        disk) leaves the file saved before intact, not a truncated one.
        Arguments as Keras' `Model.save`.
        """
        return _saving.save_atomically(super().save, filepath, *args, **kwargs)

    def get_config(self) -> dict:
        serialize = keras.saving.serialize_keras_object
        shared = {}
        if _saving.shares_tokenizer(self.teacher, self.student):
            shared["shared_tokenizer"] = True  # keras-hub LMs.
        return {
            "name": self.name,
            # The Keras that wrote it: loading in the other one is refused
            # with the fix (`tfkd._saving.check_keras_mode`).
            "keras": _keras.KERAS_NAME,
            # The frozen teacher's compile state is not the Distiller's.
            "teacher": _saving.without_compile(serialize(self.teacher)),
            "student": serialize(self.student),
            "distillation_loss": _methods.terms_config(self._terms, serialize),
            "alpha": self._base_alpha,
            "augment": _augment.serialize(self.augment),
            "mixup": self.mixup,
            "self_teacher": _self_teacher.get_config(self),
            **shared,
        }

    @classmethod
    def from_config(
        cls, config: dict, custom_objects: dict | None = None
    ) -> Distiller:
        arguments = _saving.distiller_arguments(config, custom_objects)
        arguments["teacher"] = _self_teacher.from_config(
            arguments.pop("self_teacher", None),
            arguments["teacher"],
            arguments["student"],
        )
        return cls(**arguments)

    # Internals.

    _split_inputs = staticmethod(teachers.split_inputs)

    def _forward(self, model, tapped, x, training):
        """Returns `(outputs, {layer_name: features})` from ONE forward pass."""
        _validation.check_single_input(model, x, "student")
        return tapped(x, training=training)

    def _compute_losses(
        self,
        y,
        sample_weight,
        teacher_outputs,
        student_outputs,
        training,
        mix=None,
    ):
        """This replica's share of the total loss (`tfkd._objective`);
        updates the loss trackers."""
        terms = _objective.compute(
            self._terms,
            self.alpha,
            self._student_loss_fns,
            self._pairing,
            (y, sample_weight),
            teacher_outputs,
            student_outputs,
            self.student.losses
            + [
                loss
                for a in self.adapters
                if a is not None
                for loss in a.losses
            ],
            training,
            mix=mix,
        )
        local_batch = tf.cast(
            tf.shape(tf.nest.flatten(student_outputs[0])[0])[0], tf.float32
        )
        for tracker, term in zip(self._loss_trackers, terms):
            tracker.update_state(term.mean, sample_weight=local_batch)
        return terms[0].share

    def _metrics_result(self, x, y, student_outputs, sample_weight):
        if y is not None:
            logs = self.compute_metrics(x, y, student_outputs, sample_weight)
        else:
            # No labels: the compiled metrics have nothing to measure (and
            # are unbuilt); the loss trackers are the step's logs.
            logs = {t.name: t.result() for t in self._loss_trackers}
        return self._step_logs(logs)
