"""The distillation methods of the examples' `--method` flag: a plain dict.

Each entry maps a name to a factory `temperature -> distillation_loss` for
`tfkd.Distiller(teacher, student, distillation_loss=...)`. Feature methods tap
the layers that `examples/models.py` names in every model: `"features"` (conv
maps: the CNN student only) and `"embedding"` (the penultimate dense layer:
every student). Their weights are the papers' (RepDistiller's defaults), and
each is combined with Hinton KD at `temperature`.

Example:
    >>> from examples import methods
    >>> distiller = tfkd.Distiller(
    ...     teacher, student, distillation_loss=methods.build("dkd", 4.0))
"""

import tfkd


def _with_kd(feature_loss, weight):
    return lambda temperature: [
        tfkd.losses.KD(temperature=temperature),
        (feature_loss(), weight),
    ]


METHODS = {
    "kd": lambda temperature: tfkd.losses.KD(temperature=temperature),
    "kd_standardized": lambda temperature: tfkd.losses.KD(
        temperature=temperature, standardize=True
    ),
    "dkd": lambda temperature: tfkd.losses.DKD(temperature=temperature),
    "dist": lambda temperature: tfkd.losses.DIST(temperature=temperature),
    # Logit regression (Ba & Caruana 2014): no temperature.
    "output_matching": lambda temperature: tfkd.losses.OutputMatching(),
    "fitnets": _with_kd(
        lambda: tfkd.losses.FitNets("features", "features"), 100.0
    ),
    "attention": _with_kd(
        lambda: tfkd.losses.AttentionTransfer("features", "features"), 1000.0
    ),
    "sp": _with_kd(
        lambda: tfkd.losses.SimilarityPreserving("embedding", "embedding"),
        3000.0,
    ),
    "rkd": _with_kd(lambda: tfkd.losses.RKD("embedding", "embedding"), 1.0),
    "pkt": _with_kd(lambda: tfkd.losses.PKT("embedding", "embedding"), 30000.0),
}

# Methods that tap "features": they need a student with conv maps.
CONV_METHODS = ("fitnets", "attention")


def build(name, temperature=4.0):
    """The distillation loss of method `name`.

    Args:
        name: one of `METHODS`.
        temperature: temperature of the logit term. Defaults to `4.0`.

    Returns:
        A `tfkd.losses` method, or a list of methods and `(method, weight)`
        tuples, for `tfkd.Distiller(distillation_loss=...)`.

    Raises:
        ValueError: if `name` is not in `METHODS`.
    """
    if name not in METHODS:
        raise ValueError(
            f"Unknown distillation method. Expected one of {sorted(METHODS)}. "
            f"Received: method={name!r}"
        )
    return METHODS[name](temperature)
