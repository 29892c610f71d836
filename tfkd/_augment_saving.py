"""How a Distiller's `augment` is checked for saving, saved and loaded.

A Keras layer (or any object with `get_config`) is saved by Keras. A
function is saved by name, as Keras saves a custom loss function:

- registered with `keras.saving.register_keras_serializable`, by its
  registered name (`"package>name"`), which Keras loads back;
- otherwise, in a form of tfkd's own (`_USER_FUNCTION`), loaded only from
  `custom_objects` or the registry, never as a Keras built-in: Keras saves
  an unregistered function by its bare name, and one named like a Keras
  built-in (`relu`) reloaded as the built-in, silently.

What has no name to load by (a `functools.partial`, a bound method, a
callable object without `get_config`) is refused when the Distiller is
built, not at `save` or `load_model`. A lambda is saved by Keras as Python
bytecode, which `load_model(..., safe_mode=False)` loads.
"""

import functools
import types

from tfkd._keras import keras

_USER_FUNCTION = "tfkd>UserFunction"
_KERAS_MODULES = ("keras", "tf_keras")

_FIX = (
    "Define a named function at module level, decorated with "
    "`@keras.saving.register_keras_serializable()` (its arguments as "
    "constants or defaults), or pass a Keras layer (a `keras.layers.Layer` "
    "subclass with `get_config`), which is saved with the Distiller."
)


def _is_lambda(augment):
    return getattr(augment, "__name__", None) == "<lambda>"


def _is_named_function(augment):
    """A plain function, or a `tf.function` of one: saved by name."""
    if isinstance(augment, (types.FunctionType, types.BuiltinFunctionType)):
        return True
    wrapped = getattr(augment, "python_function", None)
    return isinstance(wrapped, types.FunctionType)


def check_saveable(augment):
    """Refuses a callable `augment` that could not be saved and loaded."""
    if isinstance(augment, functools.partial):
        kind = "a `functools.partial`"
    elif isinstance(augment, types.MethodType):
        kind = "a bound method"
    elif _is_lambda(getattr(augment, "python_function", None)):
        kind = "a `tf.function` of a lambda"
    elif _is_named_function(augment) or hasattr(augment, "get_config"):
        return
    else:
        kind = (
            f"a callable {type(augment).__name__} object without `get_config`"
        )
    raise TypeError(
        f"`augment` is {kind}, which the Distiller cannot save (it is saved "
        f"with the Distiller, by name for a function). {_FIX} Received: "
        f"augment={augment!r}"
    )


def _is_registered(augment):
    name = keras.saving.get_registered_name(augment)
    return keras.saving.get_registered_object(name) is augment


def serialize(augment):
    if augment is None:
        return None
    if (
        _is_named_function(augment)
        and not _is_lambda(augment)
        and not _is_registered(augment)
    ):
        module = getattr(augment, "__module__", None) or ""
        if module.split(".")[0] not in _KERAS_MODULES:
            return {
                "class_name": _USER_FUNCTION,
                "config": augment.__name__,
                "module": module,
            }
    return keras.saving.serialize_keras_object(augment)


def _error(error_type, name, reason):
    return error_type(
        f"Could not load the Distiller's `augment` ({name!r}): {reason} A "
        "function passed as `augment` is saved by name; pass it to "
        f"`load_model(..., custom_objects={{{name!r}: function}})` or "
        "decorate it with `@keras.saving.register_keras_serializable()`."
    )


def deserialize(config, custom_objects=None):
    """The `augment` of a saved Distiller's config."""
    if config is None:
        return None
    if isinstance(config, dict) and config.get("class_name") == _USER_FUNCTION:
        name = config["config"]
        function = keras.saving.get_registered_object(
            name, custom_objects=custom_objects
        )
        if function is None:
            raise _error(
                TypeError,
                name,
                f"no function of that name was given (it was defined in "
                f"module {config.get('module')!r}).",
            )
        return function
    try:
        return keras.saving.deserialize_keras_object(
            config, custom_objects=custom_objects
        )
    except (TypeError, ValueError) as error:
        if isinstance(config, dict) and config.get("class_name") == (
            "__lambda__"
        ):
            raise type(error)(
                "Could not load the Distiller's `augment`, a lambda, saved "
                f"as Python bytecode: {error} Load a trusted file with "
                "`load_model(..., safe_mode=False)`, or give the Distiller a "
                "named function registered with "
                "`@keras.saving.register_keras_serializable()`."
            ) from error
        name = config.get("config") if isinstance(config, dict) else config
        raise _error(type(error), name, error) from error
