"""`tfkd.Distiller`: train a student from a frozen teacher with `fit`.

Over 400 lines on purpose: the one public class, Keras' `Model` API that it
overrides (`compile`, `fit`, `train_step`, `test_step`, configs) and the
docs users read with `help()` (a quarter of the file). The work is in
functions of their own modules: the objective (`_objective`), the methods
(`_methods`), argument checks (`_validation`), augmentation (`_augment`),
layer taps (`_taps`), the teacher's logs (`_teacher_logs`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tfkd import _augment
from tfkd import _cache_format
from tfkd import _data_checks
from tfkd import _keras
from tfkd import _loss_scale
from tfkd import _methods
from tfkd import _objective
from tfkd import _pairing
from tfkd import _saving
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
            (weighted average), see `tfkd.teachers.ensemble`.
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
        if isinstance(teacher, (list, tuple, dict)):
            teacher = teachers.ensemble(teacher)
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model):
                if type(model).__module__.startswith("keras_hub"):
                    raise TypeError(
                        f"`{role}` is a keras-hub model "
                        f"({type(model).__name__}): keras-hub models are "
                        f"Keras 3 only, and tfkd uses {_keras.KERAS_NAME}. "
                        "Unset TF_USE_LEGACY_KERAS to distil them."
                    )
                raise TypeError(
                    f"`{role}` must be a `{_keras.KERAS_NAME}.Model`. "
                    f"Received: {role}={model!r} of type "
                    f"{type(model).__name__}. (Models built with the other "
                    f"Keras cannot be mixed: tfkd uses {_keras.KERAS_NAME}, "
                    "see TF_USE_LEGACY_KERAS.)"
                )
        if student is teacher:
            raise ValueError(
                f"The student is the teacher itself ({teacher.name!r}). Pass a "
                "separate, trainable student model."
            )
        alpha = check_positive("alpha", alpha, allow_zero=True)
        if alpha > 1:
            raise ValueError(
                f"`alpha` must be in [0, 1]. Received: alpha={alpha}"
            )
        if temperature is not None:
            check_positive("temperature", temperature)
        augment = _augment.check_augment(augment)
        mixup = _augment.check_mixup(mixup)
        self._output_names = _validation.output_names(student)
        teacher_names = _validation.output_names(teacher)
        if len(teacher_names) != len(self._output_names):
            raise ValueError(
                f"Teacher {teacher.name!r} has {len(teacher_names)} output(s) "
                f"{teacher_names} but student {student.name!r} has "
                f"{len(self._output_names)} {self._output_names}: distillation "
                "pairs them output by output."
            )
        self._teacher_names = teacher_names
        self._teacher_order = _pairing.teacher_order(
            teacher, student, teacher_names, self._output_names
        )
        terms, self._default_method = _methods.resolve_distillation_losses(
            distillation_loss, temperature, self._output_names
        )
        _validation.check_outputs_logits(teacher, "teacher")
        _validation.check_outputs_logits(student, "student")

        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
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
        self._loss_entries = [(method, weight) for method, weight, _ in terms]
        self._output_indices = [index for _, _, index in terms]
        self.alpha = self._scalar_weight("alpha", alpha)
        self.distillation_losses = [method for method, _, _ in terms]
        self.loss_weights = [
            self._scalar_weight(f"loss_weight_{i}", weight)
            for i, (_, weight, _) in enumerate(terms)
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
        shapes = self._check_output_shapes()
        # A one-logit head is binary (its softmax would be constant), unless
        # `compile` gives it a regression loss.
        self._one_logit = [s is not None and s[-1] == 1 for s in shapes]
        self._default_entries = list(self._loss_entries)
        self._output_defaults([None] * len(self._output_names))
        _methods.softmax_methods_on_one_class(
            [
                (method, weight, index)
                for (method, weight), index in zip(
                    self._loss_entries, self._output_indices
                )
            ],
            shapes,
            self._output_names,
        )
        self.adapters = _taps.make_adapters(
            teacher, student, self.distillation_losses
        )

        self._loss_tracker_total = keras.metrics.Mean(name="loss")
        self._student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self._distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self._student_loss_fns = [None] * len(self._output_names)
        self._compile_arguments = None
        # Nothing is left to build once both models are: mark the Distiller
        # built so that weight checkpoints (BackupAndRestore) can save it.
        if self.teacher.built and self.student.built:
            self.built = True

    # Construction helpers.

    def _output_defaults(self, losses):
        """Gives each output the default method of its kind (its compiled
        loss `losses[index]`, its width: `_methods.output_kind`) when the
        Distiller uses the default method."""
        if not self._default_method:
            return
        for position, index in enumerate(self._output_indices):
            base, weight = self._default_entries[position]
            kind = _methods.output_kind(losses[index], self._one_logit[index])
            method = _methods.default_for(base, kind)
            self.distillation_losses[position] = method
            self._loss_entries[position] = (method, weight)

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
        """Checks output shapes pairwise; returns the student's (or Nones)."""
        shapes = []
        for model in (self.teacher, self.student):
            outputs = getattr(model, "outputs", None)
            if outputs and len(outputs) == len(self._output_names):
                try:
                    structure = model.output
                except (AttributeError, ValueError):
                    structure = outputs
                if model is self.teacher:
                    flat = self._teacher_flat(structure)
                else:
                    flat = _validation.flatten_outputs(
                        structure, self._output_names, model.name
                    )
                shapes.append([tuple(t.shape) for t in flat])
            else:
                shapes.append([None] * len(self._output_names))
        for name, teacher_shape, student_shape in zip(
            self._output_names, *shapes
        ):
            if teacher_shape is not None and student_shape is not None:
                self._check_logits_shapes(teacher_shape, student_shape, name)
        return shapes[1]

    def _teacher_flat(self, outputs):
        """The teacher's outputs as a list in the student's output order
        (paired by name where both name them: `tfkd._pairing`).

        A one-key dict where one output is expected is that output: a
        SavedModel signature's `{"output_0": logits}`, as a
        `keras.layers.TFSMLayer` teacher returns it.
        """
        if len(self._teacher_names) == 1 and isinstance(outputs, dict):
            if len(outputs) == 1:
                (outputs,) = outputs.values()
        flat = _validation.flatten_outputs(
            outputs, self._teacher_names, "teacher"
        )
        return _pairing.reorder(flat, self._teacher_order)

    def _check_logits_shapes(self, teacher_shape, student_shape, name=None):
        if tuple(teacher_shape)[1:] != tuple(student_shape)[1:]:
            where = "" if len(self._output_names) == 1 else f" at {name!r}"
            raise ValueError(
                f"Teacher {self.teacher.name!r} outputs shape "
                f"{tuple(teacher_shape)} but student {self.student.name!r} "
                f"outputs shape {tuple(student_shape)}{where}. Distillation "
                "compares them class by class: give the student the "
                "teacher's number of outputs."
            )

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
        if "loss_weights" in kwargs:
            raise ValueError(
                "`loss_weights` is not used by the Distiller: weigh the "
                "student loss with `alpha` and the methods with "
                "`(method, weight)` tuples."
            )
        self._student_loss_fns = _validation.resolve_student_losses(
            loss, self._output_names
        )
        alpha = float(self.alpha.numpy())
        if alpha > 0 and all(fn is None for fn in self._student_loss_fns):
            raise ValueError(
                f"alpha={alpha:g} weighs a hard-label student "
                "loss, but `compile` got no `loss`. Pass e.g. "
                "`loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)`"
                ", or use `alpha=0.0` for pure distillation."
            )
        self._output_defaults(
            _validation.losses_per_output(loss, self._output_names)
        )
        # Copies, as given: tf_keras renames a multi-output model's metric
        # objects in place (`large_binary_accuracy`), and these recompile
        # other models (a loaded Distiller, the teacher's evaluation).
        self._compile_arguments = dict(
            loss=loss,
            metrics=_validation.copy_metrics(metrics),
            **{
                key: kwargs[key]
                for key in ("weighted_metrics", "jit_compile", "run_eagerly")
                if key in kwargs
            },
        )
        if "weighted_metrics" in self._compile_arguments:
            self._compile_arguments["weighted_metrics"] = (
                _validation.copy_metrics(kwargs["weighted_metrics"])
            )
        if len(self._output_names) > 1:
            # Keras maps per-output metrics by these names.
            self.output_names = list(self._output_names)
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
        if not _keras.is_compiled(student):
            if isinstance(loss, str):
                loss = _validation.STUDENT_LOSSES[loss]()
            if not isinstance(optimizer, str):
                optimizer = type(optimizer).from_config(optimizer.get_config())
            if isinstance(metrics, (list, tuple)):
                metrics = [_validation.copy_metric(m) for m in metrics]
            student.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        if student.built and getattr(student, "optimizer", None) is not None:
            # Built now, so that a saved Distiller holds the optimizer that
            # `load_model` rebuilds (else Keras warns that it skipped it).
            _keras.build_optimizer(
                student.optimizer, student.trainable_variables
            )

    def get_compile_config(self) -> dict | None:
        """What `compile` got, so that `keras.models.load_model` recompiles
        the Distiller (and then restores its optimizer's state)."""
        if self._compile_arguments is None or not _keras.is_compiled(self):
            return {} if not _keras.IS_LEGACY else None
        serialize = keras.saving.serialize_keras_object
        config = {
            key: serialize(value)
            for key, value in self._compile_arguments.items()
        }
        config["optimizer"] = serialize(self.optimizer)
        return config

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
        teacher_logs = _teacher_logs.TeacherValidation.for_fit(self, kwargs)
        if teacher_logs is not None:
            # First, so that the callbacks after it (History, CSVLogger,
            # the progress bar) see its logs.
            callbacks = [teacher_logs] + callbacks
        return super().fit(*args, callbacks=callbacks, **kwargs)

    @property
    def metrics(self) -> list:
        return [
            self._loss_tracker_total,
            self._student_loss_tracker,
            self._distillation_loss_tracker,
        ] + _keras.compiled_metrics(self)

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
        return tuple(weight for _, weight in self._loss_entries)

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
        return {
            "name": self.name,
            # The Keras that wrote it: loading in the other one is refused
            # with the fix (`tfkd._saving.check_keras_mode`).
            "keras": _keras.KERAS_NAME,
            # The frozen teacher's compile state is not the Distiller's.
            "teacher": _saving.without_compile(serialize(self.teacher)),
            "student": serialize(self.student),
            "distillation_loss": [
                [serialize(loss), weight, index]
                for (loss, weight), index in zip(
                    self._loss_entries, self._output_indices
                )
            ],
            "alpha": self._base_alpha,
            "augment": _augment.serialize(self.augment),
            "mixup": self.mixup,
        }

    @classmethod
    def from_config(
        cls, config: dict, custom_objects: dict | None = None
    ) -> Distiller:
        _saving.check_keras_mode(config)
        config = dict(config)
        config.pop("keras", None)
        # Also for files saved before the teacher's compile state was left
        # out: its optimizer's state would not load ("Skipping variable
        # loading for optimizer").
        config["teacher"] = _saving.without_compile(config["teacher"])
        deserialize = keras.saving.deserialize_keras_object
        for key in ("teacher", "student"):
            config[key] = deserialize(
                config[key], custom_objects=custom_objects
            )
        config["augment"] = _augment.deserialize(
            config.get("augment"), custom_objects=custom_objects
        )
        config["distillation_loss"] = _methods.distillation_loss_from_terms(
            [
                (deserialize(entry[0], custom_objects=custom_objects),)
                + tuple(entry[1:])
                for entry in config["distillation_loss"]
            ],
            len(_validation.output_names(config["student"])),
        )
        return cls(**config)

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
        """Returns this replica's share of the total loss (see
        `tfkd._objective`) and updates the loss trackers.

        `mix`: mixup's `(lam, permutation)`: the hard-label term is then
        `lam * loss(y, s) + (1 - lam) * loss(y[permutation], s)`, sample
        weights permuted with the labels.
        """
        names = self._output_names
        t_outputs, t_features = teacher_outputs
        s_outputs, s_features = student_outputs
        t_flat = self._teacher_flat(t_outputs)
        s_flat = _validation.flatten_outputs(s_outputs, names, "student")
        for name, t, s in zip(names, t_flat, s_flat):
            self._check_logits_shapes(t.shape, s.shape, name)
        labels = _validation.labels_per_output(y, names)
        if isinstance(sample_weight, (dict, list, tuple)):
            weights = _validation.labels_per_output(sample_weight, names)
        else:
            weights = [sample_weight] * len(names)
        _data_checks.check_sample_weights(names, weights, s_flat)
        scale = _objective.batch_scale(tf.shape(s_flat[0])[0])

        loss_fns = _objective.label_losses(
            names, self._student_loss_fns, y, labels, self.alpha
        )
        student = _objective.hard_label_terms(
            zip(loss_fns, labels, s_flat, weights), scale
        )
        if mix is not None:
            lam, permutation = mix
            permuted = _objective.hard_label_terms(
                zip(
                    loss_fns,
                    [_augment.permute(v, permutation) for v in labels],
                    s_flat,
                    [_augment.permute(v, permutation) for v in weights],
                ),
                scale,
            )
            student = _objective.add(
                _objective.weigh(lam, student),
                _objective.weigh(1.0 - lam, permuted),
            )
        distillation = _objective.distillation_terms(
            zip(self.distillation_losses, self.loss_weights, self.adapters),
            self._output_indices,
            (t_flat, t_features),
            (s_flat, s_features),
            labels,
            weights,
            scale,
            training,
        )

        # As Keras: the models' regularization losses count in evaluate too,
        # so that loss and val_loss compare.
        regularization = _objective.regularization_term(
            self.student.losses
            + [
                loss
                for adapter in self.adapters
                if adapter is not None
                for loss in adapter.losses
            ],
            scale,
        )
        _validation.check_no_masks(names, s_flat)
        total = _objective.total(
            self.alpha, student, distillation, regularization
        )
        for tracker, value in (
            (self._loss_tracker_total, total.mean),
            (self._student_loss_tracker, student.mean),
            (self._distillation_loss_tracker, distillation.mean),
        ):
            tracker.update_state(value, sample_weight=scale.local_batch)
        return total.share

    def _metrics_result(self, x, y, student_outputs, sample_weight):
        if y is not None:
            logs = self.compute_metrics(x, y, student_outputs, sample_weight)
        else:
            # No labels: the compiled metrics have nothing to measure (and
            # are unbuilt); the loss trackers are the step's logs.
            logs = {
                tracker.name: tracker.result()
                for tracker in (
                    self._loss_tracker_total,
                    self._student_loss_tracker,
                    self._distillation_loss_tracker,
                )
            }
        return self._step_logs(logs)
