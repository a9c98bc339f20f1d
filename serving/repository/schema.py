"""The manifest of a published model version: the one contract between the optimizer and serving.

Every version directory in a model repository holds a ``manifest.json`` that validates against
:class:`Manifest`. The schema is versioned (``schema_version``); readers refuse versions they do not
know instead of guessing.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

SCHEMA_VERSION = 3
#: Every schema version this optiserve reads: 1 (before text tasks' labels and entities) loads
#: unchanged, its new fields at their defaults; 3 adds image preprocessing. A version is written
#: with the lowest schema version that expresses it (:func:`schema_version_for`), so a gateway
#: one release older still reads every text and tensor version during an upgrade.
READABLE_SCHEMA_VERSIONS = (1, 2, 3)

#: Open Inference Protocol tensor datatypes and the numpy dtype each maps to.
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]
Task = Literal["embedding", "classification", "token-classification", "generic"]
Runtime = Literal["onnxruntime", "openvino", "torch", "sklearn"]
Device = Literal["cpu", "cuda"]

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")


def check_model_name(name: str) -> str:
    """Validate a model name: the one check every place a name enters uses (the command line,
    the repository, the serve config, the API, rollout state), since a name becomes a directory
    name, a URL path segment, a Serve application name, a ConfigMap name and a PromQL literal.
    The whole string must match (``re.match`` with ``$`` let ``"minilm\\n"`` through)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"model name {name!r} is invalid: expected 1-63 characters of letters, digits, "
            "'_', '.', '-', starting with a letter or digit"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One named tensor of a signature."""

    name: str = Field(description="Tensor name as clients send it (OIP input/output name).")
    datatype: Datatype = Field(description="Open Inference Protocol datatype.")
    shape: list[int] = Field(
        description="Shape; -1 marks a dynamic dimension. The first dimension is the batch."
    )

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("shape must have at least the batch dimension")
        if any(d < -1 or d == 0 for d in v):
            raise ValueError(f"shape {v} has an invalid dimension: expected -1 or a positive size")
        return v


class Signature(_Strict):
    """Inputs and outputs of a model."""

    inputs: list[TensorSpec] = Field(min_length=1, description="Input tensors, in model order.")
    outputs: list[TensorSpec] = Field(min_length=1, description="Output tensors, in model order.")

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


class TextPreprocessing(_Strict):
    """How a text model turns strings into tensors; done by serving, inside the replica."""

    kind: Literal["text"] = "text"
    tokenizer_file: str = Field(description="Artifact path of a HuggingFace tokenizers JSON file.")
    max_length: PositiveInt = Field(description="Truncation length in tokens.")
    text_input: str = Field("text", description="Name of the BYTES input clients send.")
    ids_input: str = Field("input_ids", description="Model input receiving token ids.")
    mask_input: str | None = Field("attention_mask", description="Model input receiving the mask.")
    type_ids_input: str | None = Field(None, description="Model input receiving token type ids.")
    pad_id: int | None = Field(
        None, ge=0, description="Token id rows are padded with (the model's pad_token_id); "
        "absent: the tokenizer's [PAD] token, else 0.")
    truncation_side: Literal["right", "left"] = Field(
        "right", description="Which end of a text longer than max_length is cut off; the "
        "response lists the rows that were (parameters.truncated).")


class ImagePreprocessing(_Strict):
    """How an image model turns encoded images (JPEG, PNG, WebP) into its pixel tensor; done by
    serving, in the gateway, exactly as recorded here (the optimizer judged every variant on
    images preprocessed by the same code, :mod:`serving.images`).

    Steps, in order: decode (refusing more than ``max_pixels`` pixels before any pixel is
    decoded), EXIF orientation applied, converted to RGB, resized (``resize``), center-cropped
    to ``height`` x ``width`` (``crop``), scaled by ``rescale``, normalised per channel
    ``(x - mean) / std``, channels in ``channel_order``, laid out as ``layout``."""

    kind: Literal["image"] = "image"
    image_input: str = Field("image", description="Name of the BYTES input clients send: one "
                             "encoded image per element.")
    pixel_input: str = Field("pixel_values", description="Model input receiving the pixels.")
    height: PositiveInt = Field(description="Height of the model's pixel tensor.")
    width: PositiveInt = Field(description="Width of the model's pixel tensor.")
    resize: Literal["shortest-edge", "exact"] = Field(
        "shortest-edge", description="'shortest-edge': the shorter side scaled to "
        "``resize_to`` keeping the aspect ratio, then the middle height x width cropped out "
        "(torchvision's Resize + CenterCrop); 'exact': scaled to height x width, aspect ratio "
        "not kept, nothing cropped.")
    resize_to: PositiveInt | None = Field(
        None, description="'shortest-edge': the shorter side's length after resizing (e.g. "
        "256 before a 224 crop), at least height and width; absent: the larger of the two.")
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] = Field(
        "bilinear", description="Resampling filter (Pillow's, antialiased).")
    rescale: float = Field(1 / 255, gt=0, description="Factor applied to 0..255 pixel values "
                           "before normalising.")
    mean: list[float] = Field(min_length=3, max_length=3, description="Per-channel mean "
                              "subtracted after rescaling, in RGB order.")
    std: list[float] = Field(min_length=3, max_length=3, description="Per-channel standard "
                             "deviation divided by, in RGB order.")
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model "
                                                 "expects.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout of pixel_input.")
    max_pixels: PositiveInt = Field(
        40_000_000, description="Most pixels (width x height) of one encoded image; a larger "
        "one is refused (413) from its header, before it is decoded (decompression bombs).")
    formats: list[Literal["JPEG", "PNG", "WEBP"]] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP"], min_length=1,
        description="Encoded formats accepted; anything else is refused (400).")

    @field_validator("std")
    @classmethod
    def _std(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("every std must be positive")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> ImagePreprocessing:
        if self.resize_to is not None and self.resize_to < max(self.height, self.width):
            raise ValueError(f"resize_to {self.resize_to} is smaller than the crop "
                             f"{self.height}x{self.width}: the crop would leave the image")
        return self

    @property
    def pixel_shape(self) -> list[int]:
        """The model input's shape, batch first (-1)."""
        if self.layout == "NCHW":
            return [-1, 3, self.height, self.width]
        return [-1, self.height, self.width, 3]


class Postprocessing(_Strict):
    """What a text classifier's or token classifier's outputs mean: the label of each class,
    how probabilities are made, how tokens become entities. Done by serving, in the gateway."""

    labels: list[str] = Field(min_length=1, description="Class names, in the order of the "
                              "probability columns (the model's id2label).")
    multi_label: bool = Field(False, description="Independent sigmoid probabilities per "
                              "class (several may hold); otherwise a softmax over classes.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Multi-label: a class is predicted "
                             "when its probability is at least this.")
    aggregation: Literal["simple"] | None = Field(
        None, description="Token classification: how tokens become entities ('simple': "
        "adjacent tokens of one entity type grouped, as transformers' pipeline does with "
        "aggregation_strategy='simple').")
    ignore_labels: list[str] = Field(
        default_factory=lambda: ["O"], description="Token classification: labels that are "
        "no entity.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if any(not isinstance(x, str) or not x for x in v):
            raise ValueError("every label must be a non-empty string")
        return v


class Artifact(_Strict):
    """A file of the version, with its content hash."""

    path: str = Field(description="Path relative to the version directory.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the file's bytes.")
    size_bytes: int = Field(ge=0, description="File size in bytes.")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or ".." in parts or not v or v == "manifest.json":
            raise ValueError(f"artifact path {v!r} must be relative, inside the version directory")
        return v


class Fidelity(_Strict):
    """Agreement of a variant with the reference, on the validation data."""

    samples: int = Field(ge=0, description="Validation rows compared.")
    cosine_mean: float | None = Field(None, description="Mean cosine similarity (embeddings).")
    cosine_min: float | None = Field(None, description="Minimum cosine similarity (embeddings).")
    neighbour_agreement: float | None = Field(
        None, description="Mean overlap of top-k nearest neighbours with the reference's."
    )
    top1_agreement: float | None = Field(None, description="Share of equal top-1 (classifiers).")
    top5_overlap: float | None = Field(
        None, description="Image classifiers: mean share of the reference's five best classes "
        "among the variant's five best.")
    accuracy: float | None = Field(None, description="Top-1 accuracy against labels, when given.")
    reference_accuracy: float | None = Field(None, description="The reference's top-1 accuracy "
                                             "on the same labels.")
    token_agreement: float | None = Field(
        None, description="Token classification: share of tokens (special tokens and padding "
        "left out) given the reference's label.")
    entity_f1: float | None = Field(
        None, description="Token classification: F1 of the entities (type, start, end) "
        "against the reference's entities.")
    max_prob_diff: float | None = Field(None, description="Largest probability difference.")
    max_abs_diff: float | None = Field(None, description="Largest absolute output difference.")
    f1: float | None = Field(None, description="Macro F1 against labels, when labels were given.")
    roc_auc: float | None = Field(None, description="ROC AUC against labels, when given.")
    reference_f1: float | None = Field(None, description="The reference's F1 on the same labels.")
    reference_roc_auc: float | None = Field(None, description="The reference's ROC AUC.")
    passed: bool = Field(description="Whether the variant is within the fidelity budget.")
    budget: str = Field(description="The budget it was judged against, in words.")
    rows: Literal["held-out", "tuning"] | None = Field(
        None, description="Which validation rows: 'held-out' (disjoint from every row used to "
        "tune or calibrate; what the variant is judged on) or 'tuning' (the rows builders saw); "
        "absent in versions built before the split, judged on all rows.")
    split: str | None = Field(None, description="How the rows were split, in words (seed, "
                              "counts).")

    def headline(self) -> str:
        """The numbers a variant is judged on, short (for tables)."""
        if self.cosine_min is not None:
            return f"cos min {self.cosine_min:.4f}"
        if self.token_agreement is not None:
            return f"tokens {self.token_agreement:.4f}, entity F1 {self.entity_f1:.4f}"
        if self.top1_agreement is not None:
            return f"top-1 {self.top1_agreement:.4f}"
        return ""


class LatencyPoint(_Strict):
    """Measured latency and throughput at one batch size."""

    batch_size: PositiveInt
    seq_len: int | None = Field(None, description="Tokens per row, for text models.")
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float = Field(description="Rows per second.")
    iterations: int


class Measurements(_Strict):
    """Everything the optimizer measured for this variant."""

    fidelity: Fidelity = Field(description="Fidelity on the held-out rows: what the variant "
                               "was judged and chosen on.")
    tuning_fidelity: Fidelity | None = Field(
        None, description="Fidelity on the tuning rows (those calibration and node choice "
        "saw), for comparison: optimistic by construction.")
    latency: list[LatencyPoint] = Field(default_factory=list)
    peak_rss_mb: float | None = Field(None, description="Peak resident memory while benchmarked.")
    load_time_s: float | None = Field(None, description="Time to load the artifact.")
    size_bytes: int = Field(ge=0, description="Total artifact size.")
    intra_op_threads: int | None = Field(None, description="Threads used while benchmarking.")
    host: str | None = Field(None, description="Machine the numbers come from.")


class BatchingPolicy(_Strict):
    """Dynamic batching settings; serving uses these as its defaults."""

    max_batch_size: PositiveInt = Field(description="Most rows in one model call.")
    max_delay_ms: float = Field(ge=0, le=10_000, description="Longest a row waits for batch-mates.")
    p99_target_ms: float | None = Field(None, description="Latency objective it was chosen for.")
    reason: str | None = Field(None, description="How it was derived.")


class Source(_Strict):
    """What the version was built from."""

    kind: Literal["builtin", "onnx", "torch-factory", "sklearn", "huggingface"]
    ref: str = Field(description="Built-in name, file path, directory (Hugging Face) or "
                     "'package.module:function'.")
    sha256: str | None = Field(None, description="Hash of the source file, when there is one.")


class Manifest(_Strict):
    """A published, immutable model version."""

    schema_version: Literal[1, 2, 3] = Field(
        2, description="Manifest schema version (3 when the version has image preprocessing).")
    name: str = Field(description="Model name.")
    version: PositiveInt = Field(description="Version number; grows with each publish.")
    variant: str = Field(description="Optimized variant, e.g. 'onnx-int8-dynamic'.")
    task: Task = Field(description="What the outputs mean; decides fidelity and shadow comparison.")
    runtime: Runtime = Field(description="Runtime that loads the model file.")
    model_file: str = Field(description="Artifact path of the model file the runtime loads.")
    device: Device = Field("cpu", description="Device the variant was built for.")
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime providers, in priority order (onnxruntime only).",
    )
    model_signature: Signature = Field(description="Tensors the model file takes and returns.")
    signature: Signature = Field(description="Tensors clients send and receive.")
    preprocessing: TextPreprocessing | None = Field(None, description="Text preprocessing.")
    image_preprocessing: ImagePreprocessing | None = Field(
        None, description="Image preprocessing (schema_version 3): encoded images in, the "
        "model's pixel tensor out.")
    postprocessing: Postprocessing | None = Field(
        None, description="Labels and entity aggregation of text (and token) classifiers.")
    artifacts: list[Artifact] = Field(min_length=1, description="Every file, with its sha256.")
    measurements: Measurements
    batching: BatchingPolicy
    source: Source
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    optiserve_version: str = Field(description="Version of optiserve that built it.")
    notes: list[str] = Field(default_factory=list, description="Build notes (exclusions, ...).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)

    @model_validator(mode="before")
    @classmethod
    def _version_default(cls, data):
        """A new manifest gets the lowest schema version that expresses it."""
        if isinstance(data, dict) and "schema_version" not in data:
            data = {**data, "schema_version": schema_version_for(data)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [a.path for a in self.artifacts]
        if len(set(paths)) != len(paths):
            raise ValueError("artifacts list a path twice")
        if self.model_file not in paths:
            raise ValueError(f"model_file {self.model_file!r} is not among the artifacts")
        if self.preprocessing is not None and self.preprocessing.tokenizer_file not in paths:
            raise ValueError(
                f"tokenizer_file {self.preprocessing.tokenizer_file!r} is not among the artifacts"
            )
        if self.image_preprocessing is not None:
            if self.schema_version < 3:
                raise ValueError("image_preprocessing needs schema_version 3")
            if self.preprocessing is not None:
                raise ValueError("a version has text or image preprocessing, not both")
        if self.task == "token-classification" and (
                self.postprocessing is None or self.postprocessing.aggregation is None):
            raise ValueError("a token-classification version needs postprocessing with its "
                             "labels and aggregation")
        return self

    def artifact(self, path: str) -> Artifact:
        for a in self.artifacts:
            if a.path == path:
                return a
        raise KeyError(path)


def schema_version_for(data: dict) -> int:
    """The lowest schema version that expresses a manifest's fields: 3 with image
    preprocessing, else 2."""
    return 3 if data.get("image_preprocessing") is not None else 2
