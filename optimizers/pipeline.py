"""optimize: source -> reference outputs -> variants -> fidelity -> benchmark -> choice -> publish."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from serving.repository import (
    Artifact,
    BatchingPolicy,
    Fidelity,
    Manifest,
    Measurements,
    ModelRepository,
    RepositoryError,
    VersionRef,
)
from serving.runtimes import available_cpus

from .errors import OptimizeError
from .fidelity import FidelityBudget, judge as judge_fidelity
from .measure import measure_in_subprocess
from .progress import Progress, Silent
from .selection import best_throughput, fidelity_score, pareto_front, recommend_batching
from .sources import SourceModel, resolve_source
from .validation import Split, ValidationSet, load_validation, split_validation
from .variants import (
    VARIANTS, BuildContext, VariantBuild, VariantSkipped, build_order, default_variants,
)

OPTISERVE_VERSION = "0.1.0"


@dataclass
class OptimizeOptions:
    """Everything ``optiserve optimize`` takes."""

    source: str
    name: str | None = None
    variants: list[str] | None = None
    validation_data: str | None = None
    labels: str | None = None
    budget: FidelityBudget = field(default_factory=FidelityBudget)
    publish: Literal["best", "all", "none"] = "best"
    report_dir: str | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    p99_target_ms: float = 100.0
    #: Threads each variant is measured with: serving's default is one thread per replica
    #: (a replica reserves one Ray CPU unless --cpus-per-replica says more); match the two.
    threads: int = 1
    task: str | None = None
    #: Hugging Face encoders served as feature extraction: "mean" or "cls" pooling.
    pooling: str | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] | None = None
    repository: str | None = None
    min_time_s: float = 1.0
    #: Most seconds one search (fp32 nodes, accuracy control) may take.
    tune_seconds: float = 300.0
    #: Seconds every search together may take once their best cases are measured; they run
    #: fastest best case first, each within what is left (none starts with less than a
    #: quarter of it).
    search_seconds: float = 90.0
    #: Keep every built candidate (model file + extras) under this directory.
    keep_build: str | None = None
    #: scikit-learn sources: load a joblib pickle (runs its code); skops types to trust.
    trust: bool = False
    trusted_types: list[str] = field(default_factory=list)
    #: Feature selection: "5,10,20", labelled training rows, the SelectKBest score.
    select_features: str | None = None
    train_data: str | None = None
    selector: str = "f_classif"
    #: Distilled students of a transformer encoder (``optimizers.distill.DistillOptions``:
    #: --students, text --train-data); None: no students.
    distill: object | None = None
    #: Share of the validation rows held out to judge fidelity (seeded split); builders tune
    #: and calibrate on the rest only.
    held_out: float = 0.5
    split_seed: int = 0
    #: Torch factories served as image classifiers (``--preprocess image``): the
    #: ImagePreprocessing, and the class names (``--class-names``).
    image: object | None = None
    class_names: list[str] | None = None


@dataclass
class VariantOutcome:
    name: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    build: VariantBuild | None = None
    measurements: Measurements | None = None
    candidate_dir: Path | None = None
    batching: BatchingPolicy | None = None
    #: Seconds spent building and measuring it.
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok" and self.measurements.fidelity.passed

    @property
    def throughput(self) -> float:
        return best_throughput(self.measurements.latency) if self.measurements else 0.0


@dataclass
class OptimizationResult:
    source: SourceModel
    validation_notes: list[str]
    outcomes: list[VariantOutcome]
    chosen: str | None
    pareto: list[str]
    published: list[VersionRef] = field(default_factory=list)
    report: Path | None = None
    #: Feature selection's sweep, when it ran (optimizers.tabular.feature_selection).
    selection: object | None = None
    #: Where the time went: (step, seconds) in order (each variant is one step).
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.timings)

    def outcome(self, name: str) -> VariantOutcome:
        return next(o for o in self.outcomes if o.name == name)


def check_writable(repo: ModelRepository) -> None:
    """Fail before the long work if the repository cannot be written."""
    try:
        repo.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=repo.root, prefix=".write-check-"):
            pass
    except OSError as e:
        raise RepositoryError(
            f"model repository {repo.root} is not writable ({e.strerror or e}); expected a "
            "writable directory (set --repository or $OPTISERVE_REPOSITORY)"
        ) from e


def _bench_batches(vset: ValidationSet, sizes: list[int]) -> dict[int, list[dict]]:
    return {b: [vset.bench_batch(b, i) for i in range(8)] for b in sizes}


def _draft_manifest(src: SourceModel, build: VariantBuild, cdir: Path,
                    measurements: Measurements | None, batching: BatchingPolicy | None,
                    notes: list[str]) -> Manifest:
    files = sorted(p.relative_to(cdir).as_posix() for p in cdir.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    placeholder = "0" * 64
    return Manifest(
        name=src.name, version=1, variant=build.variant, task=src.task, runtime=build.runtime,
        model_file=build.model_file.name, device=build.device,
        execution_providers=build.providers if build.runtime == "onnxruntime" else [],
        model_signature=src.model_signature, signature=src.signature,
        preprocessing=src.preprocessing, image_preprocessing=src.image_preprocessing,
        postprocessing=src.postprocessing,
        artifacts=[Artifact(path=f, sha256=placeholder, size_bytes=0) for f in files],
        measurements=measurements or Measurements(
            fidelity=Fidelity(samples=0, passed=False, budget="not measured yet"), size_bytes=0),
        batching=batching or BatchingPolicy(max_batch_size=1, max_delay_ms=0.0),
        source=src.source, optiserve_version=OPTISERVE_VERSION, notes=notes,
    )


def _candidate_dir(work: Path, src: SourceModel, build: VariantBuild,
                   under: str = "candidates") -> Path:
    """The version's files as they will be published: model file plus the source's extras."""
    cdir = work / under / build.variant
    shutil.rmtree(cdir, ignore_errors=True)
    cdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build.model_file, cdir / build.model_file.name)
    for rel, path in [*src.extra_files.items(), *build.extra_files.items()]:
        (cdir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cdir / rel)
    return cdir


def candidate_version(src: SourceModel, build: VariantBuild, work: Path) -> tuple[Manifest, Path]:
    """A built variant as the optimizer measures it: its version directory (model file plus
    extras) and a draft manifest (nothing measured yet, hashes not filled)."""
    cdir = _candidate_dir(work, src, build)
    return _draft_manifest(src, build, cdir, None, None, build.notes), cdir


def optimize(opts: OptimizeOptions, progress: Progress | None = None,
             source: SourceModel | None = None) -> OptimizationResult:
    """Build, verify, measure and choose variants; publish and report as asked. ``source``: an
    already loaded source model instead of ``opts.source`` (the GPU benchmark's bundle)."""
    progress = progress or Silent()
    names = opts.variants
    unknown = [n for n in names or [] if n not in VARIANTS]
    if unknown:
        raise OptimizeError(
            f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}"
        )
    if not opts.batch_sizes or any(b < 1 for b in opts.batch_sizes):
        raise OptimizeError("--batch-sizes must be positive integers, e.g. 1,8,32")
    repo = ModelRepository(opts.repository)
    if opts.publish != "none":
        check_writable(repo)
    if opts.threads < 1:
        raise OptimizeError(f"--threads must be >= 1 (got {opts.threads})")

    _check_selection_options(opts)

    timings: list[tuple[str, float]] = []
    t0 = time.monotonic()
    progress.phase("loading the source model")
    src = source or resolve_source(opts.source, name=opts.name, task=opts.task,
                                   inputs=opts.inputs, outputs=opts.outputs, trust=opts.trust,
                                   trusted_types=opts.trusted_types, pooling=opts.pooling,
                                   image=opts.image, class_names=opts.class_names)
    names = build_order(names or default_variants(src))
    if (opts.distill is not None and src.tabular is not None and opts.train_data
            and getattr(opts.distill, "students", None) is None):
        # --train-data alone means distillation text only for text models
        raise OptimizeError(TRAIN_DATA_NEEDS_SELECTION)
    selection = None
    if opts.select_features:
        from .tabular.selection_setup import prepare

        selection, vset, split = prepare(src, opts)
    else:
        vset = load_validation(src, opts.validation_data, opts.labels)
        split = None
    progress.phase("reference outputs", total=len(vset.batches))
    ref_batches = []
    for b in vset.batches:
        ref_batches.append(src.reference(b))
        progress.advance()
    split = split or split_validation(vset, opts.held_out, opts.split_seed)
    vset.notes.append(split.note)
    tuning_reference, held_out_reference = split.reference(vset.gather(ref_batches))
    timings.append(("loading the source, validation data and reference outputs",
                    time.monotonic() - t0))

    with tempfile.TemporaryDirectory(prefix="optiserve-build-") as tmp:
        work = Path(opts.keep_build) if opts.keep_build else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # builders see the tuning rows only; every variant is judged on the held-out rows
        ctx = BuildContext(source=src, validation=split.tuning, reference=tuning_reference,
                           held_out_reference=held_out_reference, budget=opts.budget,
                           # checking fidelity may use every CPU; measuring uses serving's threads
                           workdir=work, threads=available_cpus(), status=progress.status,
                           tune_seconds=opts.tune_seconds)
        bench = _bench_batches(vset, sorted(set(opts.batch_sizes)))
        ranking = _Ranking(src, bench, opts.threads, work)
        ctx.cannot_win = ranking.cannot_win
        spent: dict[str, float] = {}

        def run_variant(name: str, builder, c: BuildContext, judge=None) -> VariantOutcome:
            start = time.monotonic()
            try:
                o = _build_and_measure(name, builder, c, split, bench, opts.threads, opts,
                                       work, judge)
            finally:
                spent[name] = spent.get(name, 0.0) + time.monotonic() - start
            o.seconds = spent[name]
            timings.append((name, o.seconds))
            ranking.record(o)
            return o

        outcomes: list[VariantOutcome] = []
        progress.phase("variants", total=len(names))
        # one-step builds first; then every search's best case (e.g. every node INT8), and the
        # searches in the order of their best cases, each only while it can still win
        deferred = []
        for name in names:
            progress.status(f"{name}: building")
            if VARIANTS[name].cost:
                ctx.cannot_win = ranking.defer
            try:
                outcomes.append(run_variant(name, VARIANTS[name].build, ctx))
                progress.advance()
            except _Deferred:
                deferred.append(name)
            finally:
                ctx.cannot_win = ranking.cannot_win
        left, searched = opts.search_seconds, []
        for name in sorted(deferred, key=lambda n: -ranking.best_cases[n]):
            progress.status(f"{name}: searching")
            reason = ranking.verdict(name)
            if not reason and (left <= 0 or left < opts.search_seconds / 4):
                reason = (f"no time was left for its search (--search-seconds "
                          f"{opts.search_seconds:g}"
                          + (f", spent on {', '.join(searched)}, whose best cases were faster"
                             if searched else "")
                          + f"; its best case: {ranking.best_cases[name]:.1f} rows/s at batch "
                          f"{max(bench)})")
            if reason:
                outcomes.append(VariantOutcome(name, "skipped", reason=reason,
                                               seconds=spent[name]))
                timings.append((name, spent[name]))
            else:
                ctx.tune_seconds = min(opts.tune_seconds, left)
                start = time.monotonic()
                outcomes.append(run_variant(name, VARIANTS[name].build, ctx))
                left -= time.monotonic() - start
                searched.append(name)
                ctx.tune_seconds = opts.tune_seconds
            progress.advance()
        sweep = None
        if selection is not None:
            from .tabular.selection_setup import run

            sweep, selected = run(selection, ctx, progress,
                                  lambda name, build, judge: run_variant(name, build, ctx, judge))
            outcomes += selected
        if opts.distill is not None:
            start = time.monotonic()
            outcomes += _students(src, names, ctx, vset, split, opts, work, progress,
                                  run_variant)
            timings.append(("distillation (training)", time.monotonic() - start - sum(
                o.seconds for o in outcomes if "/" in o.name)))

        passing = {o.name: o for o in outcomes if o.passed}
        points = {o.name: (o.throughput, fidelity_score(o.measurements.fidelity))
                  for o in outcomes if o.status == "ok"}
        chosen = max(passing.values(), key=lambda o: o.throughput).name if passing else None
        if sweep is not None:
            from .tabular.selection_setup import choose

            chosen = choose(sweep, passing) or chosen
        result = OptimizationResult(src, vset.notes, outcomes, chosen, pareto_front(points),
                                    selection=sweep, timings=timings)

        if opts.report_dir:
            from .report import write_report

            start = time.monotonic()
            progress.phase("writing the report")
            result.report = write_report(result, Path(opts.report_dir), opts)
            timings.append(("the report", time.monotonic() - start))
        if opts.publish != "none" and chosen:
            start = time.monotonic()
            to_publish = [passing[chosen]] if opts.publish == "best" else sorted(
                passing.values(), key=lambda o: -o.throughput)
            progress.phase("publishing", total=len(to_publish))
            for o in to_publish:
                result.published.append(_publish(repo, src, o))
                progress.advance()
            if result.report:
                from .report import append_published

                append_published(result.report, result.published)
            timings.append(("publishing", time.monotonic() - start))
    return result


TRAIN_DATA_NEEDS_SELECTION = ("--train-data is the labelled data --select-features fits on; "
                              "pass --select-features k1,k2,... too (or drop --train-data)")


def _check_selection_options(opts: OptimizeOptions) -> None:
    """Option combinations that cannot work, refused before anything is loaded or built."""
    if opts.train_data and not opts.select_features and opts.distill is None:
        raise OptimizeError(TRAIN_DATA_NEEDS_SELECTION)
    if opts.select_features and opts.validation_data:
        raise OptimizeError("--select-features measures every variant on the held-out quarter "
                            "of --train-data; drop --validation-data")


def _students(src: SourceModel, names: list[str], ctx: BuildContext, vset: ValidationSet,
              split: Split, opts: OptimizeOptions, work: Path, progress: Progress, run_variant
              ) -> list[VariantOutcome]:
    """Distilled students, each through the teacher's variants and judged like them on the
    teacher's held-out reference; a student that cannot be made is one skipped outcome."""
    from .distill import Student, own_fidelity, student_builder, student_sources, student_variants

    outcomes = []
    # no validation sentence, tuning or held-out, is trained on
    for st in student_sources(src, opts.distill, progress, held_out=vset.texts or ()):
        if not isinstance(st, Student):
            outcomes.append(VariantOutcome(st.name, "skipped", reason=st.reason))
            continue
        sctx = dataclasses.replace(ctx, source=st.source, workdir=work / st.name, cache={})
        # whether the student is worth quantizing is a build decision: tuning rows only
        own = own_fidelity(st, split.tuning, ctx.reference, opts.budget)
        snames = student_variants(names)
        progress.phase(f"{st.name} variants", total=len(snames))
        for name in snames:
            full = f"{st.name}/{name}"
            progress.status(f"{full}: building")
            outcomes.append(run_variant(
                full, student_builder(st, name, VARIANTS[name].build, own), sctx))
            progress.advance()
    return outcomes


class _Deferred(Exception):
    """A search stopped at its best case until every search's best case is known."""


class _Ranking:
    """The fastest variant within budget so far, and a cheap measurement of each search's best
    case (e.g. every node INT8; the search for nodes to keep in higher precision only slows
    it): a search runs only when its best case can beat the leader."""

    #: a best case this much slower than the leader still searches (a short measurement's noise)
    MARGIN = 0.9

    def __init__(self, src: SourceModel, bench: dict[int, list[dict]], threads: int,
                 work: Path):
        self.src, self.bench, self.threads, self.work = src, bench, threads, work
        self.best: VariantOutcome | None = None
        #: rows/s of each deferred search's best case, at the largest benchmarked batch
        self.best_cases: dict[str, float] = {}

    def record(self, o: VariantOutcome) -> None:
        if o.passed and (self.best is None or o.throughput > self.best.throughput):
            self.best = o

    def _speed(self, src: SourceModel, build: VariantBuild) -> float:
        size = max(self.bench)
        cdir = _candidate_dir(self.work, src, build, under="best-case")
        draft = _draft_manifest(src, build, cdir, None, None, [])
        m = measure_in_subprocess(draft, cdir, [], {size: self.bench[size][:4]}, self.threads,
                                  min_time_s=0.3, min_iters=3)
        return m.latency[0].throughput

    def defer(self, ctx: BuildContext, label: str, build: VariantBuild) -> str | None:
        """Measure the best case and stop the build until every best case is known."""
        self.best_cases[label] = self._speed(ctx.source, build)
        raise _Deferred(label)

    def verdict(self, label: str, speed: float | None = None) -> str | None:
        speed = self.best_cases[label] if speed is None else speed
        if self.best is None:
            return None
        size = max(self.bench)
        lead = next((p.throughput for p in self.best.measurements.latency
                     if p.batch_size == size), None)
        if lead is None or speed >= self.MARGIN * lead:
            return None
        return (f"its best case (every node quantized) runs {speed:.1f} rows/s at batch "
                f"{size}, below {self.best.name} ({lead:.1f} rows/s) already within the "
                "budget: a search for nodes to keep in higher precision only slows it, so it "
                "was skipped")

    def cannot_win(self, ctx: BuildContext, label: str, build: VariantBuild) -> str | None:
        if ctx.source is self.src and label in self.best_cases:  # measured while deferred
            return self.verdict(label)
        return self.verdict(label, self._speed(ctx.source, build)) if self.best else None


def _build_and_measure(name: str, builder, ctx: BuildContext, split: Split, bench,
                       threads: int, opts: OptimizeOptions, work: Path, judge=None
                       ) -> VariantOutcome:
    src = ctx.source
    try:
        build = builder(ctx)
    except _Deferred:
        raise
    except VariantSkipped as e:
        return VariantOutcome(name, "skipped", reason=str(e))
    except Exception as e:  # a broken variant is reported, not fatal
        return VariantOutcome(name, "failed", reason=_error_text(e))
    try:
        draft, cdir = candidate_version(src, build, work)
        ctx.status(f"{name}: measuring")
        held, tune = split.held_out, split.tuning
        m = measure_in_subprocess(draft, cdir, held.batches + tune.batches, bench, threads,
                                  min_time_s=opts.min_time_s)
    except Exception as e:
        return VariantOutcome(name, "failed", reason=_error_text(e), build=build)
    judged = held.gather(m.outputs[:len(held.batches)])
    seen = tune.gather(m.outputs[len(held.batches):])
    fidelity = judge_fidelity(src, ctx.held_out_reference, judged, opts.budget, held,
                              held.labels)
    tuning = judge_fidelity(src, ctx.reference, seen, opts.budget, tune, tune.labels)
    if judge is not None:  # variants judged on their own terms (feature selection)
        fidelity = judge(fidelity, judged, held)
        tuning = judge(tuning, seen, tune)
    fidelity = fidelity.model_copy(update={"rows": "held-out", "split": split.note})
    tuning = tuning.model_copy(update={"rows": "tuning", "split": split.note})
    size = sum(p.stat().st_size for p in cdir.rglob("*") if p.is_file())
    measurements = Measurements(
        fidelity=fidelity, tuning_fidelity=tuning, latency=m.latency,
        peak_rss_mb=round(m.peak_rss_mb, 1),
        load_time_s=round(m.load_time_s, 4), size_bytes=size, intra_op_threads=m.threads,
        host=m.host,
    )
    batching = recommend_batching(m.latency, opts.p99_target_ms)
    return VariantOutcome(name, "ok", build=build, measurements=measurements, candidate_dir=cdir,
                          batching=batching)


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    if isinstance(e, (OptimizeError, RuntimeError)) or len(text) > 20:
        return text.splitlines()[0][:500] if text else repr(e)
    return "".join(traceback.format_exception_only(type(e), e)).strip()[:500]


def _publish(repo: ModelRepository, src: SourceModel, o: VariantOutcome) -> VersionRef:
    def fill(staging: Path) -> Manifest:
        for f in o.candidate_dir.rglob("*"):
            if f.is_file():
                dest = staging / f.relative_to(o.candidate_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        notes = [*o.build.notes, *src.notes]
        return _draft_manifest(src, o.build, staging, o.measurements, o.batching, notes)

    return repo.publish(src.name, fill)
