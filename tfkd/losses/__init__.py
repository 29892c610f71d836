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
from tfkd.losses._tokens import TVD
from tfkd.losses._tokens import ForwardKL
from tfkd.losses._tokens import GeneralizedJSD
from tfkd.losses._tokens import ReverseKL
from tfkd.losses._tokens import SkewKL
from tfkd.losses._tokens import SkewReverseKL
from tfkd.losses._tokens import forward_kl_loss
from tfkd.losses._tokens import generalized_jsd_loss
from tfkd.losses._tokens import reverse_kl_loss
from tfkd.losses._tokens import skew_kl_loss
from tfkd.losses._tokens import skew_reverse_kl_loss
from tfkd.losses._tokens import tvd_loss
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
    "ForwardKL",
    "GeneralizedJSD",
    "KD",
    "OutputMatching",
    "PKT",
    "RKD",
    "ReverseKL",
    "SimilarityPreserving",
    "SkewKL",
    "SkewReverseKL",
    "TVD",
    "attention_transfer_loss",
    "dist_loss",
    "dkd_loss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "hint_loss",
    "kd_loss",
    "output_matching_loss",
    "pkt_loss",
    "reverse_kl_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "tvd_loss",
]
