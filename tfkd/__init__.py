"""tfkd: knowledge distillation for TensorFlow and Keras.

Keras 3 by default; tf_keras with `TF_USE_LEGACY_KERAS=1` (needed for TFMOT
quantization-aware training). See `tfkd._keras`. `tfkd.keras` is the Keras
that tfkd selected (build models with it) and `tfkd.KERAS_NAME` its name,
`"keras"` or `"tf_keras"`.
"""

from tfkd import callbacks
from tfkd import export
from tfkd import losses
from tfkd import quantization
from tfkd import self_distillation
from tfkd import teachers
from tfkd._keras import KERAS_NAME
from tfkd._keras import keras
from tfkd._version import __version__ as __version__
from tfkd.distiller import Distiller
from tfkd.teachers import cache_teacher_outputs

__all__ = [
    "KERAS_NAME",
    "Distiller",
    "cache_teacher_outputs",
    "callbacks",
    "export",
    "keras",
    "losses",
    "quantization",
    "self_distillation",
    "teachers",
]
