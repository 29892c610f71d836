"""Distillation losses: pure TensorFlow functions and their Keras wrappers.

Functions take the teacher's tensor first and return the batch mean in
float32. The classes wrap them for `tfkd.Distiller`.
"""

from tfkd.losses._base import DistillationLoss
from tfkd.losses._features import attention_transfer_loss
from tfkd.losses._features import hint_loss
from tfkd.losses._features import pkt_loss
from tfkd.losses._features import rkd_loss
from tfkd.losses._features import similarity_preserving_loss
from tfkd.losses._logits import dist_loss
from tfkd.losses._logits import dkd_loss
from tfkd.losses._logits import kd_loss
from tfkd.losses._outputs import OutputMatching
from tfkd.losses._outputs import output_matching_loss
from tfkd.losses._self import byot_feature_loss
from tfkd.losses._self import byot_kd_loss
from tfkd.losses._self import pskd_loss
from tfkd.losses._self import teacher_free_loss
from tfkd.losses._self_wrappers import PSKD
from tfkd.losses._self_wrappers import TeacherFreeKD
from tfkd.losses._wrappers import DIST
from tfkd.losses._wrappers import DKD
from tfkd.losses._wrappers import KD
from tfkd.losses._wrappers import PKT
from tfkd.losses._wrappers import RKD
from tfkd.losses._wrappers import AttentionTransfer
from tfkd.losses._wrappers import FitNets
from tfkd.losses._wrappers import SimilarityPreserving

__all__ = [
    "AttentionTransfer",
    "DIST",
    "DKD",
    "DistillationLoss",
    "FitNets",
    "KD",
    "OutputMatching",
    "PKT",
    "PSKD",
    "RKD",
    "SimilarityPreserving",
    "TeacherFreeKD",
    "attention_transfer_loss",
    "byot_feature_loss",
    "byot_kd_loss",
    "dist_loss",
    "dkd_loss",
    "hint_loss",
    "kd_loss",
    "output_matching_loss",
    "pkt_loss",
    "pskd_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "teacher_free_loss",
]
