"""Distillation losses: pure TensorFlow functions and their Keras wrappers.

Functions take the teacher's tensor first and return the batch mean in
float32. The classes wrap them for `tfkd.Distiller`. `METHODS` is the table
of every method, read by the tests' matrices, the examples' `--method` flag
and the docs (docs/methods.md, "Adding a method").
"""

import types

from tfkd.losses._base import DistillationLoss
from tfkd.losses._base import Method
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
from tfkd.losses._token_wrappers import TVD
from tfkd.losses._token_wrappers import ForwardKL
from tfkd.losses._token_wrappers import GeneralizedJSD
from tfkd.losses._token_wrappers import ReverseKL
from tfkd.losses._token_wrappers import SkewKL
from tfkd.losses._token_wrappers import SkewReverseKL
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

# name -> `Method`: the one table of tfkd's methods (read-only).
METHODS = types.MappingProxyType(
    {
        "kd": Method(KD, kd_loss, "logits", paper="Hinton et al. 2015"),
        "kd_standardized": Method(
            KD,
            kd_loss,
            "logits",
            kwargs={"standardize": True},
            paper="Sun et al., CVPR 2024",
        ),
        "dkd": Method(DKD, dkd_loss, "logits", paper="Zhao et al., CVPR 2022"),
        "dist": Method(
            DIST, dist_loss, "logits", paper="Huang et al., NeurIPS 2022"
        ),
        "output_matching": Method(
            OutputMatching,
            output_matching_loss,
            "logits",
            paper="Ba & Caruana, NeurIPS 2014",
        ),
        "fitnets": Method(
            FitNets, hint_loss, "maps", 100.0, paper="Romero et al., ICLR 2015"
        ),
        "attention": Method(
            AttentionTransfer,
            attention_transfer_loss,
            "maps",
            1000.0,
            paper="Zagoruyko & Komodakis, ICLR 2017",
        ),
        "sp": Method(
            SimilarityPreserving,
            similarity_preserving_loss,
            "features",
            3000.0,
            paper="Tung & Mori, ICCV 2019",
        ),
        "rkd": Method(
            RKD, rkd_loss, "features", paper="Park et al., CVPR 2019"
        ),
        "pkt": Method(
            PKT,
            pkt_loss,
            "features",
            30000.0,
            paper="Passalis & Tefas, ECCV 2018",
        ),
        # Self-distillation: the labels' virtual teacher (no teacher read),
        # and past predictions (a snapshot of the student as the teacher).
        "teacher_free": Method(
            TeacherFreeKD,
            teacher_free_loss,
            "logits",
            paper="Yuan et al., CVPR 2020",
        ),
        "pskd": Method(
            PSKD, pskd_loss, "logits", paper="Kim et al., ICCV 2021"
        ),
        # Token-level divergences of language-model distillation
        # (docs/language_models.md); any `(batch, ..., vocab)` logits.
        "forward_kl": Method(
            ForwardKL, forward_kl_loss, "logits", paper="Hinton et al. 2015"
        ),
        "reverse_kl": Method(
            ReverseKL,
            reverse_kl_loss,
            "logits",
            paper="Gu et al. (MiniLLM), ICLR 2024",
        ),
        "gkd": Method(
            GeneralizedJSD,
            generalized_jsd_loss,
            "logits",
            paper="Agarwal et al. (GKD), ICLR 2024",
        ),
        "skew_kl": Method(
            SkewKL,
            skew_kl_loss,
            "logits",
            paper="Ko et al. (DistiLLM), ICML 2024",
        ),
        "skew_reverse_kl": Method(
            SkewReverseKL,
            skew_reverse_kl_loss,
            "logits",
            paper="Ko et al. (DistiLLM), ICML 2024",
        ),
        "tvd": Method(TVD, tvd_loss, "logits", paper="Wen et al., ACL 2023"),
    }
)

__all__ = [
    "AttentionTransfer",
    "DIST",
    "DKD",
    "DistillationLoss",
    "FitNets",
    "ForwardKL",
    "GeneralizedJSD",
    "KD",
    "METHODS",
    "Method",
    "OutputMatching",
    "PKT",
    "PSKD",
    "RKD",
    "ReverseKL",
    "SimilarityPreserving",
    "SkewKL",
    "SkewReverseKL",
    "TVD",
    "TeacherFreeKD",
    "attention_transfer_loss",
    "byot_feature_loss",
    "byot_kd_loss",
    "dist_loss",
    "dkd_loss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "hint_loss",
    "kd_loss",
    "output_matching_loss",
    "pkt_loss",
    "pskd_loss",
    "reverse_kl_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "teacher_free_loss",
    "tvd_loss",
]
