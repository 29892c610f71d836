"""Which methods a `tfkd.Distiller` runs: its `distillation_loss` resolved.

`distillation_loss` may be None (the default method), one method, a list of
methods and `(method, weight)` tuples, or, for multi-output models, a dict
or list per output; `resolve_distillation_losses` turns any of these into
`Term` records, and `distillation_loss_from_terms` back (for `from_config`).
The default method: DIST, a sigmoid KD for binary and multi-label heads,
output matching for regression outputs.
"""

import dataclasses
from typing import Any

from tfkd import _validation
from tfkd.losses._base import DistillationLoss
from tfkd.losses._base import check_positive
from tfkd.losses._outputs import OutputMatching
from tfkd.losses._wrappers import DIST
from tfkd.losses._wrappers import KD


@dataclasses.dataclass(frozen=True)
class Term:
    """One distillation term: `weight * method(teacher, student)`.

    Attributes:
        method: the `tfkd.losses` method.
        weight: its weight as configured (a float).
        output: the output whose logits it reads; `None` for a feature
            method, which reads its named layers.
        default: the Distiller's default method (DIST, or the
            `temperature`'s KD) when the user gave none: `method` is then
            the default for the output's kind (`default_for`), decided again
            when `compile` names the output's loss. `None` otherwise.
        variable: the weight's float32 variable, which schedules assign.
        adapter: the learnable adapter of a feature method whose widths
            differ, or `None`.
    """

    method: DistillationLoss
    weight: float
    output: int | None
    default: DistillationLoss | None = None
    variable: Any = None
    adapter: Any = None


def _is_weighted_pair(entry):
    return (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], DistillationLoss)
        and not isinstance(entry[1], (DistillationLoss, tuple, list))
    )


def _method_entries(entry):
    """`[(method, weight), ...]` of one output's `distillation_loss` entry."""
    if entry is None:
        return []
    if _is_weighted_pair(entry) or not isinstance(entry, (list, tuple)):
        entries = [entry]
    else:
        entries = list(entry)
    resolved = []
    for item in entries:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(
                    "A weighted `distillation_loss` entry is a `(method, "
                    f"weight)` pair; received a tuple of {len(item)}: {item!r}."
                )
            method, weight = item
        else:
            method, weight = item, 1.0
        if not isinstance(method, DistillationLoss):
            raise TypeError(
                "Each `distillation_loss` entry must be a `tfkd.losses` method "
                "(e.g. `tfkd.losses.KD()`) or a `(method, weight)` tuple. "
                f"Received: {item!r}"
            )
        resolved.append(
            (method, check_positive("loss weight", weight, allow_zero=True))
        )
    return resolved


# The defaults, chosen by benchmarks/defaults.py (docs/benchmarks.md).
BINARY_DEFAULT_TEMPERATURE = 4.0


def default_distillation_loss(temperature=None):
    """`Distiller`'s method when none is given: DIST (Huang et al. 2022);
    with a `temperature`, Hinton KD at that temperature, `KD(temperature)`
    (the keras.io recipe's meaning of `temperature`)."""
    if temperature is None:
        return DIST()
    return KD(temperature=temperature)


def binary_default(method):
    """The default `method` for a binary or multi-label head: a sigmoid
    (Bernoulli) KD, at T=4 as in tfkd 0.1 unless the Distiller got a
    `temperature` (then `method` is that KD: its temperature is kept)."""
    temperature = BINARY_DEFAULT_TEMPERATURE
    if isinstance(method, KD):  # The default asked for by `temperature`.
        temperature = method.base_value("temperature")
    return KD(temperature=temperature, activation="sigmoid")


def output_kind(loss, one_logit):
    """What the default method distils on an output: `("regression", name,
    delta)` for an output compiled with a Keras regression loss,
    `("binary",)` for a binary or multi-label head (a binary cross-entropy,
    or one logit), else `("classes",)`."""
    if loss is not None:
        regression = _validation.regression_loss(loss)
        if regression is not None:
            return ("regression",) + regression
        if _validation.is_binary_loss(loss):
            return ("binary",)
    return ("binary",) if one_logit else ("classes",)


def default_for(method, kind):
    """The default `method` (DIST, or the `temperature`'s KD) for an output
    of `kind` (see `output_kind`): output matching with the compiled loss
    on a regression output (Ba & Caruana 2014), a sigmoid KD on a binary
    head, `method` itself on classes."""
    if kind[0] == "regression":
        return OutputMatching(loss=kind[1], delta=kind[2])
    if kind[0] == "binary":
        return binary_default(method)
    return method


def resolve_distillation_losses(distillation_loss, temperature, output_names):
    """The `Term`s of a Distiller's `distillation_loss`.

    Without one, the default method on every output (`Term.default` set:
    `with_output_defaults` picks each output's kind later).
    """
    if temperature is not None and distillation_loss is not None:
        raise ValueError(
            "`temperature` selects Hinton KD instead of the default "
            "method. With `distillation_loss=...`, set the temperature "
            "on the method itself, e.g. `tfkd.losses.KD(temperature=4.0)`. "
            f"Received: temperature={temperature!r}"
        )
    if distillation_loss is None:
        return [
            Term(method, 1.0, index, default=method)
            for index, method in enumerate(
                default_distillation_loss(temperature) for _ in output_names
            )
        ]
    if isinstance(distillation_loss, (list, tuple)) and not distillation_loss:
        raise ValueError(
            "`distillation_loss` is an empty list: pass at least one "
            "`tfkd.losses` method, or None for Hinton KD."
        )
    if len(output_names) == 1 and not isinstance(distillation_loss, dict):
        entries = [distillation_loss]
    elif _is_weighted_pair(distillation_loss):
        entries = [distillation_loss] * len(output_names)
    else:
        entries = _validation.per_output(
            distillation_loss, output_names, "`distillation_loss`"
        )
    terms = []
    seen_features = set()
    for index, entry in enumerate(entries):
        for method, weight in _method_entries(entry):
            if method.teacher_layer is not None:
                # Feature methods read layers, not an output: once only.
                if id(method) in seen_features:
                    continue
                seen_features.add(id(method))
                terms.append(Term(method, weight, None))
            else:
                terms.append(Term(method, weight, index))
    if not terms:
        raise ValueError(
            "`distillation_loss` selects no method for any output "
            f"{output_names}. Give at least one output a `tfkd.losses` method "
            "(None skips an output)."
        )
    return terms


def with_output_defaults(terms, kinds):
    """`terms` with each default term's method the default for its output's
    kind (`kinds[output]`, see `output_kind`); other terms as they are."""
    return [
        term
        if term.default is None
        else dataclasses.replace(
            term, method=default_for(term.default, kinds[term.output])
        )
        for term in terms
    ]


def terms_config(terms, serialize):
    """`[[method_config, weight, output], ...]`, as `get_config` stores."""
    return [
        [serialize(term.method), term.weight, term.output] for term in terms
    ]


def distillation_loss_from_terms(terms, count):
    """`distillation_loss` for a model of `count` outputs, from the
    `(method, weight, output_index)` entries that `get_config` stores."""
    if count == 1:
        return [(method, weight) for method, weight, *_ in terms]
    per_output = [[] for _ in range(count)]
    for method, weight, *index in terms:
        # Feature terms (no output) may sit with any output: the first.
        position = index[0] if index and index[0] is not None else 0
        per_output[position].append((method, weight))
    return [entries or None for entries in per_output]


def check_class_logits(terms, shapes, output_names):
    """Refuses a method that reads a softmax over classes
    (`reads_class_logits`) on an output with a single logit."""
    for term in terms:
        method = term.method
        if term.output is None or not method.reads_class_logits:
            continue
        shape = shapes[term.output]
        if shape is not None and shape[-1] == 1:
            raise ValueError(
                f"{type(method).__name__} is a softmax over classes, but "
                f"output {output_names[term.output]!r} has one logit (shape "
                f"{shape}): the softmax of one logit is constant, so the loss "
                "would be 0. For a binary or multi-label head use "
                "`tfkd.losses.KD(activation='sigmoid')` (the default method "
                "picks it by itself)."
            )
