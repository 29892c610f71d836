"""The distillation methods of the examples' `--method` flag.

One entry per method of `tfkd.losses.METHODS` (the library's table), as a
factory `temperature -> distillation_loss` for
`tfkd.Distiller(teacher, student, distillation_loss=...)`. Feature methods
tap the layers that `examples/models.py` names in every model: `"features"`
(conv maps: the CNN students only) for the methods that read NHWC maps, and
`"embedding"` (the penultimate dense layer: every student) for the others.
Their weights are the papers' (`Method.weight`: RepDistiller's defaults),
and each is combined with Hinton KD at `temperature`.

Example:
    >>> from examples import methods
    >>> distiller = tfkd.Distiller(
    ...     teacher, student, distillation_loss=methods.build("dkd", 4.0))
"""

import tfkd


def _factory(entry):
    if entry.reads == "logits":
        # A method without a temperature (output matching) ignores it.
        return lambda temperature: entry.build(temperature=temperature)
    layer = "features" if entry.reads == "maps" else "embedding"
    return lambda temperature: [
        tfkd.losses.KD(temperature=temperature),
        (entry.build(layer, layer), entry.weight),
    ]


METHODS = {name: _factory(entry) for name, entry in tfkd.losses.METHODS.items()}

# Methods that tap "features": they need a student with conv maps.
CONV_METHODS = tuple(
    name for name, entry in tfkd.losses.METHODS.items() if entry.reads == "maps"
)


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
