"""Smaller students of transformer encoders: layers dropped, heads and FFN channels pruned,
trained to give the teacher's outputs on unlabeled text (see ``stage.student_sources``)."""

from .stage import (
    DistillOptions, Student, StudentSkipped, default_students, own_fidelity, parse_students,
    student_builder, student_sources, student_variants,
)
from .student import CannotPrune, StudentSpec

__all__ = ["CannotPrune", "DistillOptions", "Student", "StudentSkipped", "StudentSpec",
           "default_students", "own_fidelity", "parse_students", "student_builder",
           "student_sources", "student_variants"]
