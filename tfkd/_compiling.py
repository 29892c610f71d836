"""What `Distiller.compile` checks, keeps and passes on.

The student's hard-label losses and their check against `alpha`, the
arguments kept for `get_compile_config` (so that `load_model` recompiles),
and the student's own compilation (so that `student.evaluate` works).
"""

from tfkd import _keras
from tfkd import _validation
from tfkd._keras import keras

# The `compile` arguments that a saved Distiller recompiles with.
_KEPT = ("weighted_metrics", "jit_compile", "run_eagerly")


def student_losses(loss, output_names, alpha, kwargs):
    """The hard-label loss of each output (None where there is none).

    Raises:
        ValueError: `loss_weights` given, or `alpha > 0` without a `loss`.
    """
    if "loss_weights" in kwargs:
        raise ValueError(
            "`loss_weights` is not used by the Distiller: weigh the "
            "student loss with `alpha` and the methods with "
            "`(method, weight)` tuples."
        )
    losses = _validation.resolve_student_losses(loss, output_names)
    if alpha > 0 and all(fn is None for fn in losses):
        raise ValueError(
            f"alpha={alpha:g} weighs a hard-label student "
            "loss, but `compile` got no `loss`. Pass e.g. "
            "`loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)`"
            ", or use `alpha=0.0` for pure distillation."
        )
    return losses


def kept_arguments(loss, metrics, kwargs):
    """The arguments that `get_compile_config` saves.

    Copies of the metrics, as given: tf_keras renames a multi-output
    model's metric objects in place (`large_binary_accuracy`), and these
    recompile other models (a loaded Distiller, the teacher's evaluation).
    """
    arguments = dict(loss=loss, metrics=_validation.copy_metrics(metrics))
    for key in _KEPT:
        if key in kwargs:
            arguments[key] = kwargs[key]
    if "weighted_metrics" in arguments:
        arguments["weighted_metrics"] = _validation.copy_metrics(
            kwargs["weighted_metrics"]
        )
    return arguments


def compile_student(student, optimizer, loss, metrics):
    """Compiles an uncompiled student so `student.evaluate` just works.

    It gets the hard-label loss, its own copies of the metrics and a fresh
    optimizer of the same configuration (never the Distiller's).
    """
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
        _keras.build_optimizer(student.optimizer, student.trainable_variables)


def compile_config(model, arguments):
    """`get_compile_config` of `model`, compiled with `arguments`."""
    if arguments is None or not _keras.is_compiled(model):
        return {} if not _keras.IS_LEGACY else None
    serialize = keras.saving.serialize_keras_object
    config = {key: serialize(value) for key, value in arguments.items()}
    config["optimizer"] = serialize(model.optimizer)
    return config
