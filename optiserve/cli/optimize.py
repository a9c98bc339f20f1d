"""``optiserve optimize``: build, verify, benchmark, choose and publish optimized variants."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from .common import RepositoryOption, console, fail, progress_bars


def _csv_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{option} must be comma-separated integers, e.g. 1,8,32 (got {text!r})")
    if not values or any(v < 1 for v in values):
        fail(f"{option} must be positive integers, e.g. 1,8,32 (got {text!r})")
    return values


def optimize_command(
    source: str = typer.Argument(
        ..., help="'minilm', 'efficientnet-lite0' or 'breast-cancer' (built-ins), a Hugging "
                  "Face model directory "
                  "(DIR or hf:DIR, as save_pretrained writes it), a path to an .onnx file, a "
                  "torch factory 'package.module:function', or 'sklearn:FILE' (.skops or "
                  "joblib)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository."),
    variants: Optional[str] = typer.Option(
        None, "--variants", help="Comma-separated variants to build [default: all]."),
    validation_data: Optional[str] = typer.Option(
        None, "--validation-data", "--validation",
        help="Text: .txt (one per line) or .jsonl; tensors: .npz (one array per input) or .npy; "
             "scikit-learn models: .csv or .npy rows of features; image classifiers: a folder "
             "of images (.jpg, .png, .webp) (default for images: sample photos shipped in "
             "scikit-image and scikit-learn)."),
    labels: Optional[str] = typer.Option(
        None, "--labels", help="Class labels, one per validation row (classifiers): F1/ROC AUC; "
                               "with --train-data, one per training row; image folders: a "
                               "CSV of file,label lines (accuracy)."),
    max_cosine_drop: float = typer.Option(
        0.02, "--max-cosine-drop", help="Embeddings/generic: pass if cosine min >= 1 - this."),
    min_agreement: float = typer.Option(
        0.99, "--min-agreement", help="Classifiers: pass if top-1 agreement >= this; token "
                                      "classifiers: token-label agreement."),
    min_entity_f1: float = typer.Option(
        0.98, "--min-entity-f1", help="Token classifiers: pass if the entity F1 against the "
                                      "source's entities >= this."),
    max_f1_drop: float = typer.Option(0.01, "--max-f1-drop", help="With labels: allowed F1 drop."),
    held_out: float = typer.Option(
        0.5, "--held-out", help="Share of validation rows held out (seeded split) to judge "
                                "fidelity; calibration and tuning use only the others."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the held-out split."),
    publish: str = typer.Option("best", "--publish", help="best | all | none."),
    report: Optional[str] = typer.Option(None, "--report", help="Write the report into this dir."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Batch sizes to benchmark."),
    p99_target_ms: float = typer.Option(
        100.0, "--p99-target-ms", help="Latency objective for the batching recommendation."),
    threads: int = typer.Option(
        1, "--threads", help="Intra-op threads each variant is measured with; match "
                             "`optiserve serve --cpus-per-replica` (its default is 1)."),
    task: Optional[str] = typer.Option(
        None, "--task", help="embedding | classification | generic (ONNX/torch sources); "
                             "classification | token-classification | embedding (Hugging Face "
                             "directories) [default: from the source]."),
    pooling: Optional[str] = typer.Option(
        None, "--pooling", help="Hugging Face encoders served as feature extraction: mean | "
                                "cls [default: mean]."),
    inputs: Optional[list[str]] = typer.Option(
        None, "--input", help="Torch factories: NAME:DATATYPE:SHAPE, e.g. x:FP32:-1,16."),
    outputs: Optional[list[str]] = typer.Option(None, "--output", help="Output names (torch)."),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess", help="Torch factories: 'image' serves the module as an image "
                                   "classifier (encoded images in, labels out); its pixel "
                                   "tensor is described by the options below."),
    image_size: str = typer.Option("224", "--image-size", help="--preprocess image: the "
                                   "model's pixel size, N or HxW."),
    resize: str = typer.Option("shortest-edge", "--resize", help="--preprocess image: "
                               "shortest-edge (then a center crop) | exact."),
    resize_to: Optional[int] = typer.Option(
        None, "--resize-to", help="--preprocess image: the shorter side before the center "
                                  "crop (default: size / 0.875, e.g. 256 for 224)."),
    interpolation: str = typer.Option("bilinear", "--interpolation", help="--preprocess "
                                      "image: bilinear | bicubic | nearest | lanczos."),
    rescale: float = typer.Option(1 / 255, "--rescale", help="--preprocess image: factor on "
                                  "0..255 values before normalising."),
    mean: str = typer.Option("0.485,0.456,0.406", "--mean", help="--preprocess image: "
                             "per-channel mean (RGB order)."),
    std: str = typer.Option("0.229,0.224,0.225", "--std", help="--preprocess image: "
                            "per-channel std (RGB order)."),
    channel_order: str = typer.Option("RGB", "--channel-order", help="--preprocess image: "
                                      "RGB | BGR."),
    layout: str = typer.Option("NCHW", "--layout", help="--preprocess image: NCHW | NHWC."),
    class_names: Optional[str] = typer.Option(
        None, "--class-names", help="--preprocess image: a file of class names, one per line "
                                    "in score order (default: 0, 1, ...)."),
    min_time: float = typer.Option(1.0, "--min-time", help="Seconds to benchmark each size."),
    tune_seconds: float = typer.Option(
        300.0, "--tune-seconds", help="Most seconds one search (INT8-sensitive nodes kept in "
                                      "fp32, NNCF's accuracy control) may take."),
    search_seconds: float = typer.Option(
        90.0, "--search-seconds", help="Seconds all searches together may take; they run "
                                       "fastest best case (every node INT8) first, and one "
                                       "that cannot beat a variant already within budget is "
                                       "skipped."),
    keep_build: Optional[str] = typer.Option(
        None, "--keep-build", help="Keep every built candidate under DIR/candidates/<variant>."),
    select_features: Optional[str] = typer.Option(
        None, "--select-features", help="scikit-learn models: try keeping the k best features "
                                        "for each k, e.g. 5,10,20 (SelectKBest, refitted)."),
    train_data: Optional[str] = typer.Option(
        None, "--train-data", help="With --select-features: labelled rows (.csv/.npy, labels in "
                                   "--labels) feature selection fits on three quarters of and "
                                   "measures on the rest. Text models: unlabeled text (.txt, "
                                   "one sentence per line, or .jsonl) students are distilled "
                                   "on [default: the built-in corpus]."),
    students: Optional[str] = typer.Option(
        None, "--students", help="Transformer encoders: distil smaller students and put each "
                                 "through the same variants and budget, e.g. l3 (3 layers), "
                                 "l4-h25 (4 layers, a quarter of the heads pruned), "
                                 "l3-h25-f50 (and half the FFN channels) [default with "
                                 "--train-data: half the teacher's layers]."),
    distill_steps: int = typer.Option(800, "--distill-steps", help="Training steps per student."),
    distill_time: float = typer.Option(
        300.0, "--distill-time", help="Seconds of training per student at most."),
    distill_lr: float = typer.Option(2e-4, "--distill-lr", help="Students' learning rate."),
    distill_seed: int = typer.Option(0, "--distill-seed", help="Seed of students' training."),
    selector: str = typer.Option("f_classif", "--selector", help="f_classif | mutual_info."),
    trust: bool = typer.Option(
        False, "--trust", help="Load a joblib/pickle model file: it runs the code it names; "
                               "only for files you made or whose source you trust."),
    trust_types: Optional[str] = typer.Option(
        None, "--trust-types", help="Comma-separated types outside skops' default trust to "
                                    "load from a .skops file (skops names them when refusing)."),
    repository: Optional[str] = RepositoryOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Build optimized variants of a model, verify and benchmark them, publish the best."""
    from optimizers import FidelityBudget, OptimizeError, OptimizeOptions, optimize
    from serving.repository import RepositoryError

    if publish not in ("best", "all", "none"):
        fail(f"--publish must be best, all or none (got {publish!r})")
    if task not in (None, "embedding", "classification", "token-classification", "generic"):
        fail(f"--task must be embedding, classification, token-classification or generic "
             f"(got {task!r})")
    if pooling not in (None, "mean", "cls"):
        fail(f"--pooling must be mean or cls (got {pooling!r})")
    if not 0 < min_entity_f1 <= 1:
        fail(f"--min-entity-f1 must be in (0, 1] (got {min_entity_f1})")
    if not 0 <= max_cosine_drop < 1:
        fail(f"--max-cosine-drop must be in [0, 1) (got {max_cosine_drop})")
    if not 0 < min_agreement <= 1:
        fail(f"--min-agreement must be in (0, 1] (got {min_agreement})")
    if tune_seconds <= 0 or search_seconds < 0:
        fail(f"--tune-seconds must be > 0 and --search-seconds >= 0 (got {tune_seconds:g}, "
             f"{search_seconds:g})")
    if not 0 < held_out < 1:
        fail(f"--held-out must be a fraction between 0 and 1, e.g. 0.5 (got {held_out})")
    image = names = None
    if preprocess is not None:
        if preprocess != "image":
            fail(f"--preprocess must be image (got {preprocess!r})")
        from optimizers.sources.image_options import image_preprocessing, read_class_names

        try:
            image = image_preprocessing(image_size, resize, resize_to, interpolation, rescale,
                                        mean, std, channel_order, layout)
            names = read_class_names(class_names) if class_names else None
        except OptimizeError as e:
            fail(str(e))
    elif class_names:
        fail("--class-names goes with --preprocess image")
    opts = OptimizeOptions(
        source=source, name=name,
        variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None,
        validation_data=validation_data, labels=labels,
        budget=FidelityBudget(min_cosine=1.0 - max_cosine_drop, min_top1=min_agreement,
                              max_f1_drop=max_f1_drop, min_entity_f1=min_entity_f1),
        publish=publish, report_dir=report,
        batch_sizes=_csv_ints(batch_sizes, "--batch-sizes"), p99_target_ms=p99_target_ms,
        threads=threads, task=task, pooling=pooling, inputs=list(inputs or []), outputs=list(outputs or []) or None,
        repository=repository, min_time_s=min_time, tune_seconds=tune_seconds,
        search_seconds=search_seconds,
        keep_build=keep_build, trust=trust,
        trusted_types=[t.strip() for t in (trust_types or "").split(",") if t.strip()],
        select_features=select_features, train_data=train_data, selector=selector,
        held_out=held_out, split_seed=split_seed, image=image, class_names=names,
    )
    if students or (train_data and not select_features):
        from optimizers.distill import DistillOptions, parse_students

        try:
            distill = DistillOptions(
                students=parse_students(students) if students else None,
                train_data=None if select_features else train_data, steps=distill_steps,
                time_limit_s=distill_time, lr=distill_lr, seed=distill_seed)
            distill.check()
        except OptimizeError as e:
            fail(str(e))
        opts.distill = distill
    try:
        with progress_bars(not quiet) as progress:
            result = optimize(opts, progress)
    except (OptimizeError, RepositoryError) as e:
        fail(str(e))
    print_result(result)
    if result.chosen is None:
        fail("no variant is within the fidelity budget; nothing published", code=2)


def print_result(result) -> None:
    from optimizers.selection import best_throughput

    table = Table(title=f"{result.source.name}: variants")
    for col in ("variant", "status", "fidelity (held-out)", "best rows/s", "p99 ms @ batch",
                "time s", "notes"):
        table.add_column(col)
    for o in result.outcomes:
        if o.status != "ok":
            table.add_row(o.name, f"[yellow]{o.status}[/]", "", "", "", f"{o.seconds:.0f}",
                          o.reason or "")
            continue
        m = o.measurements
        f = m.fidelity
        fid = f.headline()
        best = max(m.latency, key=lambda p: p.throughput)
        status = ("[bold green]chosen[/]" if o.name == result.chosen
                  else ("ok" if f.passed else "[red]over budget[/]"))
        table.add_row(o.name, status, fid, f"{best_throughput(m.latency):.1f}",
                      f"{best.p99_ms:.3g} @ {best.batch_size}", f"{o.seconds:.0f}",
                      "; ".join(o.build.notes)[:80])
    console.print(table)
    # where the time went, largest first (the variants' own times are in the table)
    steps = sorted(result.timings, key=lambda t: -t[1])
    console.print(f"took {result.seconds:.0f} s: " + ", ".join(
        f"{name} {s:.0f} s" for name, s in steps[:6]) + (", ..." if len(steps) > 6 else ""))
    for ref in result.published:
        console.print(f"published [bold]{ref.name}:{ref.version}[/] ({ref.manifest.variant}) "
                      f"-> {ref.path}")
    if result.report:
        console.print(f"report: {result.report}")
