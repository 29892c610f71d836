"""Saving a Distiller: atomic files, the Keras that wrote them, the teacher.

`save_atomically`: `Distiller.save` never leaves a broken file where a good
one was. Keras opens the target file first and writes the archive into it:
a save
that fails half-way (an object that cannot be serialized, a full disk, an
interrupt) leaves a truncated file, 0 bytes for a configuration error, in
place of the good `.keras` file saved before. Here the archive is written
to a temporary file in the same folder, then renamed over the target with
`os.replace`, which is atomic on one file system: the target holds either
the old file or the new one, never a part.

`check_keras_mode`: Keras 3 and tf_keras cannot rebuild each other's models;
a Distiller's config names the Keras that wrote it (`"keras"`), checked
first on load, so that loading in the other mode names the fix.

`without_compile`: the frozen teacher's compile state is left out of the
Distiller's config (see the function).
"""

import os
import uuid

from tfkd import _augment_saving
from tfkd import _keras
from tfkd import _methods
from tfkd import _validation
from tfkd._keras import keras

# Single-file formats: a folder (a tf_keras SavedModel, Keras 3's
# `zipped=False`) or a remote path (`gs://`, `hf://`) is saved by Keras as
# it is.
_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def _local_file(filepath, kwargs):
    """`filepath` as a local path to save atomically, or None."""
    if not isinstance(filepath, (str, os.PathLike)):
        return None
    path = os.fspath(filepath)
    if not isinstance(path, str) or "://" in path:
        return None
    if not path.endswith(_FILE_SUFFIXES) or kwargs.get("zipped") is False:
        return None
    return path


def save_atomically(save, filepath, *args, **kwargs):
    """Calls `save(filepath, *args, **kwargs)` through a temporary file.

    `save` is a Keras `Model.save`; `args` and `kwargs` are passed as they
    are (`overwrite`, `zipped` or `save_format`, ...). Where the target
    exists and `overwrite` is false, Keras asks the user; that is left to
    it.
    """
    path = _local_file(filepath, kwargs)
    overwrite = kwargs.get("overwrite", args[0] if args else True)
    if path is None or (os.path.exists(path) and not overwrite):
        return save(filepath, *args, **kwargs)
    folder, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    temporary = os.path.join(
        folder, f".{stem}.tmp-{uuid.uuid4().hex[:12]}{suffix}"
    )
    try:
        result = save(temporary, *args, **kwargs)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return result


_DESCRIPTION = {
    "keras": "Keras 3 (TF_USE_LEGACY_KERAS unset)",
    "tf_keras": "tf_keras (TF_USE_LEGACY_KERAS=1)",
}


def _saved_keras(config):
    """ "keras" or "tf_keras": the Keras that wrote a Distiller's config;
    None where it cannot tell."""
    saved = config.get("keras")
    if saved in _DESCRIPTION:
        return saved
    # Files saved before the key: a Functional model's module names its
    # Keras (`keras.src.models.functional`, `tf_keras.src.engine...`), and
    # an `InputLayer` its shape's key (Keras 3 `batch_shape`, tf_keras
    # `batch_input_shape`: a Sequential model's module is `keras` in both).
    for role in ("teacher", "student"):
        model = config.get(role)
        module = model.get("module") if isinstance(model, dict) else None
        if not isinstance(module, str):
            continue
        if module.startswith("tf_keras."):
            return "tf_keras"
        if module.startswith("keras.src."):
            return "keras"
    for role in ("teacher", "student"):
        saved = _input_layer_keras(config.get(role))
        if saved is not None:
            return saved
    return None


def _input_layer_keras(config):
    """ "keras" or "tf_keras" from the first `InputLayer` in a serialized
    model, or None."""
    if isinstance(config, list):
        for value in config:
            saved = _input_layer_keras(value)
            if saved is not None:
                return saved
        return None
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    if config.get("class_name") == "InputLayer" and isinstance(inner, dict):
        if "batch_shape" in inner:
            return "keras"
        if "batch_input_shape" in inner:
            return "tf_keras"
    for value in config.values():
        saved = _input_layer_keras(value)
        if saved is not None:
            return saved
    return None


def check_keras_mode(config):
    """Refuses a Distiller's config written by the other Keras.

    Raises:
        ValueError: `config` (a `Distiller.get_config()`) was saved with
            Keras 3 and tfkd runs tf_keras, or the reverse: the teacher and
            student cannot be rebuilt (Keras would fail on the first model
            with "Could not locate class 'Functional'").
    """
    saved = _saved_keras(config)
    if saved is None or saved == _keras.KERAS_NAME:
        return
    switch = (
        "set TF_USE_LEGACY_KERAS=1"
        if saved == "tf_keras"
        else "unset TF_USE_LEGACY_KERAS"
    )
    raise ValueError(
        f"This Distiller was saved with {_DESCRIPTION[saved]}, but tfkd is "
        f"running {_DESCRIPTION[_keras.KERAS_NAME]}: one cannot rebuild the "
        "other's models. Load it in the Keras that saved it: "
        f"{switch} before importing TensorFlow. To carry the trained "
        "student over, save its weights there "
        '(`distiller.student.save_weights("student.weights.h5")`), build '
        "the student in this Keras and `load_weights` them (both Keras "
        f"read `.weights.h5` files). Received: a config with keras={saved!r}."
    )


def without_compile(model_config):
    """A serialized model's config without its compile state, nor that of
    the models inside it (an ensemble's teachers).

    The Distiller saves its frozen teacher with the architecture and the
    weights only: a teacher compiled (and trained) before it was wrapped
    would otherwise come back compiled, with its optimizer rebuilt for the
    frozen teacher's zero trainable variables, and Keras would warn on load
    "Skipping variable loading for optimizer 'adam'" about that optimizer,
    which the Distiller never uses (its own optimizer's state is restored).
    """
    if isinstance(model_config, dict):
        return {
            key: without_compile(value)
            for key, value in model_config.items()
            if key != "compile_config"
        }
    if isinstance(model_config, list):
        return [without_compile(value) for value in model_config]
    return model_config


def _tokenizer(model):
    return getattr(getattr(model, "preprocessor", None), "tokenizer", None)


def shares_tokenizer(teacher, student):
    """Whether teacher and student (keras-hub tasks with preprocessors)
    hold one tokenizer object, as a user who builds both from one tokenizer
    does."""
    tokenizer = _tokenizer(teacher)
    return tokenizer is not None and tokenizer is _tokenizer(student)


def distiller_arguments(config, custom_objects=None):
    """`Distiller(**arguments)` from its `get_config()`.

    Refuses a file of the other Keras mode (`check_keras_mode`), and drops
    the teacher's compile state, also from files saved before it was left
    out (its optimizer's state would not load: "Skipping variable loading
    for optimizer").
    """
    check_keras_mode(config)
    config = dict(config)
    config.pop("keras", None)
    config["teacher"] = without_compile(config["teacher"])
    deserialize = keras.saving.deserialize_keras_object
    for key in ("teacher", "student"):
        config[key] = deserialize(config[key], custom_objects=custom_objects)
    if config.pop("shared_tokenizer", False):
        # Keras saves an object met twice once (its vocabulary files under
        # the first path): deserialized as two, the second would find no
        # files ("expected str, bytes or os.PathLike object, not
        # NoneType"). Sharing it again loads it once, as it was saved.
        config["student"].preprocessor.tokenizer = _tokenizer(config["teacher"])
    config["augment"] = _augment_saving.deserialize(
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
    return config
