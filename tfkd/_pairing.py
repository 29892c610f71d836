"""Which teacher output a student output learns from, in multi-output models.

By name where both models name their outputs (dict keys, or the layers that
a user named), by position where one of them has Keras' automatic layer
names (`dense_3`); a pairing that the names contradict is refused.
"""

import re

from tfkd import _keras
from tfkd import _validation


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


class OutputPairing:
    """A teacher's outputs paired with a student's, output by output.

    Args:
        teacher, student: the two models.

    Raises:
        ValueError: the models have different numbers of outputs, or names
            that do not pair up (see `teacher_order`).
    """

    def __init__(self, teacher, student):
        self.teacher, self.student = teacher, student
        self.names = _validation.output_names(student)
        self.teacher_names = _validation.output_names(teacher)
        if len(self.teacher_names) != len(self.names):
            raise ValueError(
                f"Teacher {teacher.name!r} has {len(self.teacher_names)} "
                f"output(s) {self.teacher_names} but student {student.name!r} "
                f"has {len(self.names)} {self.names}: distillation pairs them "
                "output by output."
            )
        self.order = teacher_order(
            teacher, student, self.teacher_names, self.names
        )

    def teacher_flat(self, outputs):
        """The teacher's outputs as a list in the student's output order.

        A one-key dict where one output is expected is that output: a
        SavedModel signature's `{"output_0": logits}`, as a
        `keras.layers.TFSMLayer` teacher returns it.
        """
        if len(self.teacher_names) == 1 and isinstance(outputs, dict):
            if len(outputs) == 1:
                (outputs,) = outputs.values()
        flat = _validation.flatten_outputs(
            outputs, self.teacher_names, "teacher"
        )
        return reorder(flat, self.order)

    def student_flat(self, outputs):
        """The student's outputs as a list in output order."""
        return _validation.flatten_outputs(outputs, self.names, "student")

    def check_shapes(self, teacher_shape, student_shape, name=None):
        """Refuses a teacher and a student output of different shapes."""
        if tuple(teacher_shape)[1:] != tuple(student_shape)[1:]:
            where = "" if len(self.names) == 1 else f" at {name!r}"
            raise ValueError(
                f"Teacher {self.teacher.name!r} outputs shape "
                f"{tuple(teacher_shape)} but student {self.student.name!r} "
                f"outputs shape {tuple(student_shape)}{where}. Distillation "
                "compares them class by class: give the student the "
                "teacher's number of outputs."
            )

    def static_shapes(self):
        """Checks the built models' output shapes pairwise; returns the
        student's, one per output (Nones for a model not built)."""
        shapes = []
        for model in (self.teacher, self.student):
            outputs = getattr(model, "outputs", None)
            if outputs and len(outputs) == len(self.names):
                try:
                    structure = model.output
                except (AttributeError, ValueError):
                    structure = outputs
                if model is self.teacher:
                    flat = self.teacher_flat(structure)
                else:
                    flat = self.student_flat(structure)
                shapes.append([tuple(t.shape) for t in flat])
            else:
                shapes.append([None] * len(self.names))
        for name, teacher_shape, student_shape in zip(self.names, *shapes):
            if teacher_shape is not None and student_shape is not None:
                self.check_shapes(teacher_shape, student_shape, name)
        return shapes[1]
