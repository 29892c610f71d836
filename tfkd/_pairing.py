"""Which teacher output a student output learns from, in multi-output models.

By name where both models name their outputs (dict keys, or the layers that
a user named), by position where one of them has Keras' automatic layer
names (`dense_3`); a pairing that the names contradict is refused.
"""

import re

from tfkd import _keras


def _snake_case(name):
    """Keras' `to_snake_case`, the stem of automatic layer names."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _given_names(model, names):
    """The output names that a user gave (dict keys, named layers), in
    `names`; None for Keras' automatic names and the Distiller's
    `output_i` stand-ins."""
    try:
        structure = model.output
    except (AttributeError, ValueError):
        return [None] * len(names)
    if isinstance(structure, dict):
        return list(names)
    tensors = list(getattr(model, "outputs", None) or [])
    if len(tensors) != len(names):
        return [None] * len(names)
    given = []
    for name, tensor in zip(names, tensors):
        layer = _keras.producing_layer(tensor)
        automatic = layer is None or re.fullmatch(
            re.escape(_snake_case(type(layer).__name__)) + r"(_\d+)?", name
        )
        given.append(None if automatic else name)
    return given


def teacher_order(teacher, student, teacher_names, student_names):
    """For each student output, the position of the teacher output that it
    learns from, in `teacher_names` (the teacher's flattened outputs).

    Raises:
        ValueError: both models name an output and the names disagree.
    """
    count = len(student_names)
    if count == 1 or list(teacher_names) == list(student_names):
        return list(range(count))
    if sorted(teacher_names) == sorted(student_names) and (
        len(set(student_names)) == count
    ):
        return [list(teacher_names).index(name) for name in student_names]
    t_given = _given_names(teacher, teacher_names)
    s_given = _given_names(student, student_names)
    conflicts = [(t, s) for t, s in zip(t_given, s_given) if t and s and t != s]
    conflicts += [
        (name, name)
        for name in set(filter(None, t_given)) & set(filter(None, s_given))
        if t_given.index(name) != s_given.index(name)
    ]
    if conflicts:
        raise ValueError(
            f"Teacher {teacher.name!r} names its outputs {list(teacher_names)} "
            f"and student {student.name!r} {list(student_names)}: the "
            "Distiller pairs outputs by name where both models name them, "
            "and these names do not pair up. Give the student's outputs the "
            "teacher's names (name its output layers, e.g. "
            "`keras.layers.Dense(10, name=...)`, or return a dict keyed by "
            "the teacher's names), or wrap the teacher so that its outputs "
            "come in the student's order, e.g. `keras.Model(teacher.inputs, "
            "dict(zip(student_names, teacher_outputs_in_order)))`."
        )
    return list(range(count))


def reorder(flat, order):
    """The teacher's flattened outputs in the student's output order."""
    return [flat[index] for index in order]
