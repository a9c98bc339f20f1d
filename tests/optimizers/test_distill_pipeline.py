"""Students inside ``optimize``: each goes through the teacher's variants, is judged on the
teacher's held-out reference like them and competes in the report; one that cannot be made is
reported as skipped while the run goes on."""

from __future__ import annotations

import pytest

import optimizers.pipeline as pipeline
from optimizers import OptimizeOptions, optimize
from optimizers.distill import DistillOptions, parse_students
from optimizers.distill.corpus import load_corpus
from tests.optimizers.test_distill import _tiny_teacher


@pytest.fixture
def tiny_text_run(tmp_path, monkeypatch):
    texts, _ = load_corpus(None)
    (tmp_path / "train.txt").write_text("\n".join(texts[:200]) + "\n")
    # validation sentences: the first 40 of the corpus, so the student must not train on them
    (tmp_path / "val.txt").write_text("\n".join(texts[:40]) + "\n")
    teacher = _tiny_teacher()
    # the tiny teacher is built here, not resolvable by name: the pipeline gets it directly
    monkeypatch.setattr(pipeline, "resolve_source", lambda *a, **k: teacher)
    return tmp_path


def test_a_student_goes_through_the_variants_and_is_judged_on_held_out_rows(tiny_text_run):
    d = tiny_text_run
    result = optimize(OptimizeOptions(
        source="tiny", variants=["torch-fp32", "onnx-fp32"], validation_data=str(d / "val.txt"),
        publish="none", batch_sizes=[8], min_time_s=0.05, report_dir=str(d / "report"),
        distill=DistillOptions(students=parse_students("l2"), train_data=str(d / "train.txt"),
                               steps=10, lr=1e-3, batch_size=16, threads=1, augment=0)))
    names = [o.name for o in result.outcomes]
    assert names == ["torch-fp32", "onnx-fp32", "student-l2/torch-fp32", "student-l2/onnx-fp32"]
    for o in result.outcomes:
        assert o.status == "ok", (o.name, o.reason)
        assert o.measurements.fidelity.rows == "held-out"
        assert o.measurements.fidelity.samples == 20
    student = result.outcome("student-l2/onnx-fp32")
    # the student is a different model: judged against the teacher, it is not exact
    assert student.measurements.fidelity.cosine_min < 0.9999
    note = student.build.notes[0]
    assert "2/4 layers" in note and "10 steps" in note
    assert "40 training sentences that are also validation sentences left out" in note
    text = (d / "report" / "report.md").read_text()
    assert "| `student-l2/onnx-fp32`" in text or "| student-l2/onnx-fp32 |" in text


def test_a_student_that_cannot_be_made_is_skipped_and_the_run_goes_on(tiny_text_run):
    d = tiny_text_run
    (d / "empty.txt").write_text("\n\n")
    result = optimize(OptimizeOptions(
        source="tiny", variants=["onnx-fp32"], validation_data=str(d / "val.txt"),
        publish="none", batch_sizes=[8], min_time_s=0.05,
        distill=DistillOptions(students=parse_students("l2"), train_data=str(d / "empty.txt"),
                               steps=5, threads=1)))
    skipped = result.outcome("student-l2")
    assert skipped.status == "skipped" and "empty.txt" in skipped.reason
    assert result.outcome("onnx-fp32").status == "ok" and result.chosen == "onnx-fp32"


def test_a_student_whose_training_fails_is_skipped_and_the_run_goes_on(tiny_text_run,
                                                                       monkeypatch):
    import optimizers.distill.stage as stage

    def out_of_memory(*a, **k):  # what a student too large for the machine meets
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(stage, "distill", out_of_memory)
    d = tiny_text_run
    result = optimize(OptimizeOptions(
        source="tiny", variants=["onnx-fp32"], validation_data=str(d / "val.txt"),
        publish="none", batch_sizes=[8], min_time_s=0.05,
        distill=DistillOptions(students=parse_students("l2"), train_data=str(d / "train.txt"),
                               steps=5, threads=1, augment=0)))
    skipped = result.outcome("student-l2")
    assert skipped.status == "skipped" and "not enough memory" in skipped.reason
    assert result.chosen == "onnx-fp32"


def test_the_same_student_twice_is_refused():
    from optimizers.errors import OptimizeError

    with pytest.raises(OptimizeError, match="names l3 more than once"):
        parse_students("l3,l3-h0")
