"""The distillation stage of ``optimize``: one smaller student per requested spec, each a
SourceModel the variant builders take like the teacher (same signature, preprocessing and
tokenizer; its own torch module), judged against the teacher's reference outputs.

A student that cannot be built (the source is no transformer encoder, --train-data unusable) is
returned as ``StudentSkipped`` with the reason; the rest of the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import OptimizeError
from ..progress import Silent
from ..sources import SourceModel
from .corpus import augment, load_corpus, vocabulary_words
from .student import CannotPrune, StudentSpec, build_student, find_encoder
from .train import TrainConfig, TrainResult, compute_targets, deterministic, distill


#: Most training sentences a student is trained on (each keeps the teacher's token states in
#: memory: ~40 tokens x hidden size floats per sentence, about 1.2 GB for minilm at this cap).
MAX_SENTENCES = 20_000


@dataclass
class DistillOptions:
    """What ``--students``, ``--train-data`` (text models) and ``--distill-*`` ask for."""

    #: Student specs (``l3``, ``l4-h25-f50``); None: the source's default (half its layers).
    students: list[StudentSpec] | None = None
    #: Unlabeled text, one sentence per line (.txt) or .jsonl; None: the built-in corpus.
    train_data: str | None = None
    steps: int = 800
    time_limit_s: float = 300.0
    lr: float = 2e-4
    batch_size: int = 32
    seed: int = 0
    #: Training threads (results are reproducible for a seed and a thread count); None: all.
    threads: int | None = None
    token_weight: float = 1.0
    #: Extra generated sentences per corpus sentence (splices, random vocabulary words,
    #: dropped words; see ``corpus.augment``); 0: the corpus alone.
    augment: float = 1.0

    def check(self) -> None:
        if self.steps < 1:
            raise OptimizeError(f"--distill-steps must be >= 1 (got {self.steps})")
        if self.time_limit_s <= 0:
            raise OptimizeError(f"--distill-time must be > 0 seconds (got {self.time_limit_s})")
        if self.augment < 0:
            raise OptimizeError(f"augment must be >= 0 (got {self.augment})")
        if not 0 < self.lr < 1:
            raise OptimizeError(f"--distill-lr must be in (0, 1) (got {self.lr})")


@dataclass
class Student:
    """A trained student: its name (``student-l3``), the SourceModel variants are built from,
    a one-line description for notes and reports, and how training went."""

    name: str
    spec: StudentSpec
    source: SourceModel
    description: str
    training: TrainResult
    info: dict = field(default_factory=dict)


@dataclass
class StudentSkipped:
    name: str
    reason: str


def parse_students(text: str) -> list[StudentSpec]:
    """``l3,l4-h25`` -> specs (``--students``)."""
    specs = [StudentSpec.parse(t) for t in text.split(",") if t.strip()]
    if not specs:
        raise OptimizeError(f"--students needs at least one spec like l3 (got {text!r})")
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise OptimizeError(f"--students names {', '.join(twice)} more than once (got {text!r})")
    return specs


def default_students(src: SourceModel) -> list[StudentSpec]:
    """Half the teacher's layers (minilm: 3 of 6)."""
    n = len(find_encoder(src.torch_module).encoder.layer)
    return [StudentSpec(max(1, n // 2))]


def student_sources(src: SourceModel, opts: DistillOptions, progress=None,
                    held_out: Sequence[str] = ()) -> list[Student | StudentSkipped]:
    """Build and train each requested student of ``src``.

    ``held_out``: sentences fidelity is judged on (the validation texts); they are removed from
    the training text so a student is never judged on what it was trained on.
    """
    progress = progress or Silent()
    opts.check()
    try:
        if not src.is_text:
            raise CannotPrune(f"{src.name} cannot be pruned: distillation needs a text "
                              "transformer encoder (it takes tensors, not text)")
        find_encoder(src.torch_module)
        specs = opts.students or default_students(src)
    except CannotPrune as e:
        names = [f"student-{s.name}" for s in opts.students or []] or ["student"]
        return [StudentSkipped(n, str(e)) for n in names]
    try:
        texts, origin = load_corpus(opts.train_data)
    except OptimizeError as e:
        return [StudentSkipped(f"student-{s.name}", str(e)) for s in specs]
    held = set(held_out)
    train = [t for t in texts if t not in held]
    dropped = len(texts) - len(train)
    tokenizer = src.extra_files[src.preprocessing.tokenizer_file]
    if opts.augment and len(train) >= 2:
        extra = [t for t in augment(train, vocabulary_words(tokenizer), opts.augment, opts.seed)
                 if t not in held]
        origin += f" + {len(extra):,} generated from it"
        train += extra
    if len(train) > MAX_SENTENCES:
        # the teacher's token states of every sentence are kept for training: bound the memory
        origin += f", the first {MAX_SENTENCES:,} of {len(train):,} sentences"
        train = train[:MAX_SENTENCES]
    if len(train) < 2:
        return [StudentSkipped(f"student-{s.name}", f"--train-data {opts.train_data}: every "
                               "sentence is also a validation sentence; nothing left to train on")
                for s in specs]

    from serving.runtimes import TextEncoder, available_cpus

    encoder = TextEncoder(tokenizer, src.preprocessing)
    progress.phase(f"distillation: tokenizing {len(train)} sentences")
    rows = encoder.encode(train)
    names = [i.name for i in src.model_signature.inputs]
    threads = opts.threads or available_cpus()
    out: list[Student | StudentSkipped] = []
    targets = None
    for spec in specs:
        label = f"student-{spec.name}"
        try:
            student, info = build_student(src.torch_module, spec)
            cfg = TrainConfig(steps=opts.steps, time_limit_s=opts.time_limit_s, lr=opts.lr,
                              batch_size=opts.batch_size, seed=opts.seed, threads=threads,
                              token_weight=opts.token_weight, loss=_loss(src))
            t0 = time.monotonic()
            if targets is None:  # once for every student: the teacher's answers are the same
                with deterministic(opts.seed, threads):
                    targets = compute_targets(src.torch_module, rows, encoder.pad, names,
                                              progress)
            result = distill(student, src.torch_module, rows, encoder.pad, names, cfg, progress,
                             label=label, targets=targets)
            desc = _describe(src, spec, info, result, origin, dropped, opts,
                             time.monotonic() - t0)
            out.append(Student(label, spec, _student_source(src, student, info, desc), desc,
                               result, info))
        except OptimizeError as e:
            out.append(StudentSkipped(label, str(e)))
        except Exception as e:  # a student that fails is reported; the teacher's run goes on
            out.append(StudentSkipped(label, f"training failed: {type(e).__name__}: {e}"[:500]))
    return out


def _loss(src: SourceModel) -> str:
    """The output distance a student of ``src`` is trained on."""
    if src.task in ("classification", "token-classification"):
        return "bce" if src.multi_label else "kl"
    return "cosine"


def _describe(src, spec, info, result, origin, dropped, opts, seconds) -> str:
    parts = [f"{len(info['kept_layers'])}/{info['teacher_layers']} layers "
             f"(teacher layers {', '.join(str(i + 1) for i in info['kept_layers'])})"]
    if info["heads"] != info["teacher_heads"]:
        parts.append(f"{info['heads']}/{info['teacher_heads']} heads per layer")
    if info["ffn"] != info["teacher_ffn"]:
        parts.append(f"FFN {info['ffn']}/{info['teacher_ffn']}")
    stop = ("" if result.stopped_by == "steps"
            else f" (stopped by the {opts.time_limit_s:g} s limit)")
    text = (f"{src.name} distilled: {', '.join(parts)}; seed {opts.seed}, {result.steps} steps"
            f"{stop} in {seconds:.0f} s on {result.sentences:,} sentences ({origin}); "
            f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    if dropped:
        text += f"; {dropped} training sentences that are also validation sentences left out"
    return text


def _student_source(src: SourceModel, module, info: dict, description: str) -> SourceModel:
    transformer = dict(src.transformer) if src.transformer else None
    if transformer:
        transformer["num_heads"] = info["heads"]
    return dataclasses.replace(
        src, torch_module=module, transformer=transformer, notes=[*src.notes, description],
        _ref_session=None)


#: Teacher variants a student does not repeat: torch's dynamic INT8 is never the fastest.
NOT_FOR_STUDENTS = ("torch-int8-dynamic", "sklearn")


def student_variants(names: Sequence[str]) -> list[str]:
    """The variants each student goes through: the teacher's, less ``NOT_FOR_STUDENTS``."""
    return [n for n in names if n not in NOT_FOR_STUDENTS]


def own_fidelity(student: Student, vset, reference: dict, budget):
    """The student itself (torch fp32) against the teacher's reference outputs."""
    from ..fidelity import judge

    outputs = vset.gather([student.source.reference(b) for b in vset.batches])
    return judge(student.source, reference, outputs, budget, vset, vset.labels)


def student_builder(student: Student, variant: str, build, fidelity=None):
    """A variant builder for a student: its variant is named ``student-l3/onnx-int8-dynamic``
    and its notes start with the student's description. When the student itself (``fidelity``,
    from ``own_fidelity``) already misses the budget, its INT8 variants are skipped: quantizing
    only loses more, and the search for nodes to keep in fp32 would spend its whole time."""
    from ..selection import fidelity_score
    from ..variants import VariantSkipped

    def builder(ctx):
        if fidelity is not None and not fidelity.passed and "int8" in variant:
            raise VariantSkipped(
                f"{student.name} itself misses the budget ({fidelity.budget}): "
                f"{fidelity_score(fidelity):.4f} in torch fp32; more steps or layers may reach "
                "it")
        b = build(ctx)
        return dataclasses.replace(b, variant=f"{student.name}/{b.variant}",
                                   notes=[student.description, *b.notes])

    return builder
