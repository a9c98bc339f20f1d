"""Shared types of the variant builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.repository import Fidelity

from ..fidelity import FidelityBudget, judge, scores
from ..sources import SourceModel
from ..validation import ValidationSet


class VariantSkipped(Exception):
    """The variant does not apply here (no torch module, no CUDA device, ...): the reason."""


@dataclass
class VariantBuild:
    """A built variant: its model file in the build directory and how to run it."""

    variant: str
    runtime: str
    model_file: Path
    device: str = "cpu"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    notes: list[str] = field(default_factory=list)
    #: Files the variant adds to the version beside its model file (artifact path -> file).
    extra_files: dict[str, Path] = field(default_factory=dict)


@dataclass
class BuildContext:
    """What builders share: the source, the tuning rows of the validation data and their
    reference outputs, a scratch dir.

    ``validation``/``reference`` are the *tuning* rows only: calibration, choosing which nodes
    stay fp32 and any accuracy control use them. The held-out rows that judge a variant are not
    for builders; their reference outputs ride along for the pipeline only.
    """

    source: SourceModel
    validation: ValidationSet
    reference: dict[str, np.ndarray]
    budget: FidelityBudget
    workdir: Path
    threads: int
    status: Callable[[str], None] = lambda _msg: None
    #: Intermediate files by key ("onnx-export", "onnx-fp32", ...), built once, reused.
    cache: dict[str, Path] = field(default_factory=dict)
    tune_seconds: float = 300.0
    #: Reference outputs of the held-out rows (the pipeline judges with them; builders must not).
    held_out_reference: dict[str, np.ndarray] | None = None
    #: ``cannot_win(ctx, label, build)``: why a search for the most faithful form of a
    #: candidate is not worth its time (its best case, ``build``, measured slower than the
    #: fastest variant already within budget), or None; it may also stop the build for now
    #: (the pipeline measures every best case before any search). Searches only make a
    #: candidate slower.
    cannot_win: Callable[[BuildContext, str, VariantBuild], str | None] = \
        lambda _ctx, _label, _build: None

    def worth_searching(self, label: str, build: VariantBuild) -> None:
        """Raise :class:`VariantSkipped` when the search for ``label`` cannot pay off.
        Builders call it with their best case (e.g. every node INT8) once it misses the
        budget, before they search; a build may be stopped here and run again later, so the
        work before it is kept in ``cache``."""
        reason = self.cannot_win(self, label, build)
        if reason:
            raise VariantSkipped(reason)

    def scratch(self, name: str) -> Path:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def evaluate_onnx(self, path: Path, rows: np.ndarray | None = None
                      ) -> tuple[Fidelity, np.ndarray]:
        """Fidelity of an ONNX file on CPU (all rows, or a subset) plus per-row scores."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        vset = self.validation if rows is None else self.validation.subset(rows)
        names = [o.name for o in self.source.model_signature.outputs]
        outs = [dict(zip(names, session.run(names, b))) for b in vset.batches]
        cand = vset.gather(outs)
        ref = self.reference if rows is None else {k: v[np.sort(rows)]
                                                   for k, v in self.reference.items()}
        labels = self.validation.labels if rows is None else None
        fid = judge(self.source, ref, cand, self.budget, vset, labels)
        return fid, scores(self.source, ref, cand, vset)


@dataclass(frozen=True)
class Variant:
    """A named way of building an optimized model."""

    name: str
    description: str
    build: Callable[[BuildContext], VariantBuild]
    device: str = "cpu"
    #: 0: built in one step; 1: may search (calibration, fp32 nodes, accuracy control). Cheap
    #: variants are built and measured first, so a search can be skipped when its best case
    #: already loses to one of them.
    cost: int = 0

