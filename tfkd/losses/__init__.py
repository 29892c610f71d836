"""Distillation losses: pure TensorFlow functions and their Keras wrappers."""

from tfkd.losses._base import DistillationLoss
from tfkd.losses._functional import kd_loss
from tfkd.losses._wrappers import KD

__all__ = [
    "DistillationLoss",
    "KD",
    "kd_loss",
]
