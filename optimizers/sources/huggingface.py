"""A local Hugging Face model directory (what ``save_pretrained`` writes) as the source.

The task comes from the config's architecture, ``--task`` overrides:

- ``*ForSequenceClassification``: text classification; probabilities in ``id2label`` order (a
  softmax, or independent sigmoids when ``problem_type`` is multi-label) and the label's name;
- ``*ForTokenClassification``: token classification; per-token labels and entities;
- ``*ForImageClassification``: image classification, preprocessing from
  ``preprocessor_config.json`` (:mod:`optimizers.sources.hf_images`);
- a sentence-transformers directory (``modules.json``): its embedding, pooled and normalised as
  the modules say;
- any other encoder (``*Model``, ``*ForMaskedLM``, ...): feature extraction, token states
  pooled as ``--pooling`` says (mean by default).

Nothing is fetched: the directory is read with ``local_files_only`` and the hub is never
called; a directory whose config names its own code (``auto_map``) is refused, as
``trust_remote_code`` is never implied; safetensors are preferred and a ``.bin`` file is read
with ``weights_only``. Every way a directory can be unusable (no ``config.json``, an
architecture no task covers, no tokenizer, weights that do not fit the config, an empty label
map) stops the run before anything is built, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from serving.repository import (
    Postprocessing, Signature, Source, TensorSpec, TextPreprocessing, sha256_file,
)

from ..errors import SourceError
from .base import SourceModel

DATA = Path(__file__).resolve().parent.parent / "data"
#: Tasks a Hugging Face directory can be served as (``--task``); ``embedding`` is a
#: sentence-transformers model's embedding or an encoder's pooled features.
HF_TASKS = ("classification", "token-classification", "embedding")
#: Model types whose position ids start after the padding index (max_position_embeddings
#: counts those slots too).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart")
#: Model types ONNX Runtime's BERT fusions apply to.
_BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
#: Files a fast tokenizer can be built from when there is no tokenizer.json (transformers
#: would otherwise build an empty one from the config alone).
_SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                         "tokenizer.model", "spm.model")


@dataclass
class Directory:
    """What was read from the directory before any weight is loaded."""

    root: Path
    model_dir: Path
    config: dict
    architecture: str | None
    #: sentence-transformers: pooling modes and normalisation from modules.json
    st_modes: tuple[str, ...] | None = None
    st_normalize: bool = False
    st_max_length: int | None = None
    st_lowercase: bool = False
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(doc, dict):
        raise SourceError(f"{path}: {what} must be a JSON object")
    return doc


def _sentence_bert_config(d: Directory) -> None:
    """sentence_bert_config.json: the maximum length and lower-casing sentence-transformers use."""
    st_config = d.model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        cfg = _read_json(st_config, "the sentence-transformers config")
        d.st_max_length = cfg.get("max_seq_length")
        d.st_lowercase = bool(cfg.get("do_lower_case"))


def _sentence_transformers(root: Path, d: Directory) -> None:
    """modules.json: a Transformer module, then Pooling, then optionally Normalize."""
    modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    if not isinstance(modules, list) or not modules:
        raise SourceError(f"{root / 'modules.json'}: expected a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    supported = ("Transformer", "Pooling", "Normalize")
    other = [t for t, k in zip((m.get("type") for m in modules), kinds) if k not in supported]
    if other or kinds[0] != "Transformer" or "Pooling" not in kinds:
        raise SourceError(
            f"{root}: modules.json lists {', '.join(map(str, other)) or kinds}; optiserve "
            "serves sentence-transformers models made of a Transformer, a Pooling and an "
            "optional Normalize module")
    first = modules[0]
    d.model_dir = root / (first.get("path") or "")
    pooling = _read_json(root / modules[kinds.index("Pooling")]["path"] / "config.json",
                         "the pooling config")
    if "pooling_mode" in pooling:
        mode = pooling["pooling_mode"]
        modes = tuple(mode) if isinstance(mode, list) else (mode,)
    else:  # the older layout: one boolean per mode
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean",
                  "pooling_mode_lasttoken": "lasttoken"}
        modes = tuple(v for k, v in legacy.items() if pooling.get(k)) or ("mean",)
    from .hf_modules import POOLING_MODES

    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or pooling.get("include_prompt") is False:
        raise SourceError(f"{root}: pooling {', '.join(map(str, bad)) or 'without the prompt'} "
                          f"is not one optiserve computes ({', '.join(POOLING_MODES)})")
    d.st_modes, d.st_normalize = modes, "Normalize" in kinds
    _sentence_bert_config(d)
    d.notes.append(f"sentence-transformers: {'+'.join(modes)} pooling"
                   f"{', L2-normalised' if d.st_normalize else ''}")


def read_directory(path: Path) -> Directory:
    """The directory's config and layout, checked (no weights are read)."""
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"{path} is not a directory; expected a Hugging Face model "
                          "directory (written by save_pretrained)")
    d = Directory(root=root, model_dir=root, config={}, architecture=None)
    if (root / "modules.json").is_file():
        _sentence_transformers(root, d)
    config_path = d.model_dir / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{d.model_dir} has no config.json; expected a Hugging Face model "
                          "directory written by save_pretrained (config.json, the weights, "
                          "the tokenizer's files)")
    d.config = _read_json(config_path, "config.json")
    if d.config.get("auto_map"):
        names = ", ".join(f"{k}={v}" for k, v in d.config["auto_map"].items())
        raise SourceError(
            f"{config_path} maps its classes to code shipped with the model (auto_map: "
            f"{names}); optiserve never runs a model directory's own code (trust_remote_code "
            "is never implied). Save the model with a transformers architecture instead")
    from transformers import CONFIG_MAPPING

    model_type = d.config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise SourceError(
            f"{config_path}: model_type {model_type!r} is not one transformers knows "
            "(it would need the model's own code, and trust_remote_code is never implied)")
    archs = d.config.get("architectures") or []
    d.architecture = archs[0] if archs else None
    return d


def natural_task(d: Directory) -> str | None:
    """The task the directory's architecture means, or None when no task covers it."""
    arch = d.architecture or ""
    if arch.endswith(("ForSequenceClassification", "ForImageClassification")):
        return "classification"
    if arch.endswith("ForTokenClassification"):
        return "token-classification"
    if d.st_modes is not None:
        return "embedding"
    if not arch or arch.endswith(("Model", "ForMaskedLM", "ForPreTraining")):
        return "embedding"
    return None


def choose_task(d: Directory, task: str | None) -> str:
    natural = natural_task(d)
    if task is None:
        if natural is None:
            raise SourceError(
                f"{d.model_dir}: architecture {d.architecture} is no task optiserve serves "
                "(text classification: *ForSequenceClassification; image classification: "
                "*ForImageClassification; token classification: "
                "*ForTokenClassification; sentence embeddings: a sentence-transformers "
                "directory; feature extraction: an encoder such as *Model or *ForMaskedLM)")
        return natural
    if task not in HF_TASKS:
        raise SourceError(f"--task {task}: a Hugging Face directory is served as "
                          f"{', '.join(HF_TASKS)}")
    if task in ("classification", "token-classification") and natural != task:
        raise SourceError(f"--task {task} needs a *For{'Sequence' if task == 'classification' else 'Token'}"
                          f"Classification model; {d.model_dir} holds {d.architecture}")
    if task == "embedding" and natural is None:
        raise SourceError(f"--task embedding needs an encoder; {d.model_dir} holds "
                          f"{d.architecture}, a model no task optiserve serves covers")
    return task


def read_config(d: Directory):
    """transformers' config of the directory, read offline and without the directory's own
    code; unreadable: refused with transformers' reason."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(d.model_dir), local_files_only=True,
                                          trust_remote_code=False)
    except Exception as e:
        raise SourceError(f"{d.model_dir / 'config.json'}: transformers cannot read it "
                          f"({type(e).__name__}: {str(e)[:300]})") from None


def labels_of(d: Directory, config) -> list[str]:
    """Class names in id order; an empty or gapped label map is refused."""
    raw = d.config.get("id2label")
    if isinstance(raw, dict) and not raw:
        raise SourceError(f"{d.model_dir / 'config.json'}: id2label is empty; a classifier "
                          "needs one name per class (id2label: {\"0\": \"NEGATIVE\", ...})")
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    n = config.num_labels
    if n < 1 or sorted(id2label) != list(range(n)):
        raise SourceError(f"{d.model_dir / 'config.json'}: id2label {id2label} does not name "
                          f"classes 0..{n - 1}")
    return [id2label[i] for i in range(n)]


def weights_file(d: Directory) -> Path:
    for name in _WEIGHTS:
        if (d.model_dir / name).is_file():
            return d.model_dir / name
    raise SourceError(f"{d.model_dir} holds no weights; expected model.safetensors (or "
                      "pytorch_model.bin) as save_pretrained writes them")


def _auto_class(task: str):
    import transformers

    return {"classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification,
            "embedding": transformers.AutoModel,
            "image-classification": transformers.AutoModelForImageClassification}[task]


def load_model(d: Directory, task: str, config):
    """The model with its weights, refused when they do not fit the config."""
    weights = weights_file(d)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no weight-loading bars or notices in optiserve's output
    hf_logging.disable_progress_bar()
    try:
        model, info = _auto_class(task).from_pretrained(
            str(d.model_dir), config=config, local_files_only=True, trust_remote_code=False,
            use_safetensors=weights.name.startswith("model.safetensors"), weights_only=True,
            # tensors of another shape are reported below (and refused) with their names
            ignore_mismatched_sizes=True, output_loading_info=True, attn_implementation="eager")
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise SourceError(f"{weights}: the weights do not fit {d.model_dir / 'config.json'} "
                          f"({type(e).__name__}: {first})") from None
    # pooled features never use the pooler; everything else must come from the file
    missing = [k for k in info.get("missing_keys", [])
               if not (task == "embedding" and ".pooler." in f".{k}")]
    mismatched = [f"{k[0]} {list(k[1])} in the file, {list(k[2])} by the config"
                  if isinstance(k, tuple) and len(k) == 3 else str(k)
                  for k in info.get("mismatched_keys", [])]
    if missing or mismatched:
        what = ([f"missing {len(missing)} tensor(s): {', '.join(sorted(missing)[:6])}"]
                if missing else []) + ([f"{len(mismatched)} of another shape: "
                                        f"{', '.join(mismatched[:6])}"] if mismatched else [])
        raise SourceError(f"{weights}: the weights do not fit {d.model_dir / 'config.json'} "
                          f"({'; '.join(what)}); expected the weights save_pretrained wrote "
                          "with this config")
    # .float(): the reference computes in fp32 whatever dtype the file stores (transformers
    # may load a half-precision file as stored; the GPU benchmark's bundle is fp16)
    return model.float().eval(), weights


def _tokenizer(d: Directory, work: Path):
    """The fast tokenizer (``tokenizers``) the gateway will run: the directory's
    tokenizer.json, or one transformers builds from the slow tokenizer's files."""
    from tokenizers import Tokenizer, normalizers

    path = d.model_dir / "tokenizer.json"
    if not path.is_file() and (d.root / "tokenizer.json").is_file():
        path = d.root / "tokenizer.json"
    if path.is_file():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise SourceError(f"{path} is not a tokenizers file ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    else:
        if not any((d.model_dir / f).is_file() for f in _SLOW_TOKENIZER_FILES):
            raise SourceError(
                f"{d.model_dir} has no usable tokenizer: no tokenizer.json and none of "
                f"{', '.join(_SLOW_TOKENIZER_FILES)}; save the tokenizer with the model "
                "(tokenizer.save_pretrained(DIR))")
        try:
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(str(d.model_dir), local_files_only=True,
                                                 trust_remote_code=False, use_fast=True)
            tok = auto.backend_tokenizer
        except Exception as e:
            raise SourceError(
                f"{d.model_dir} has no usable tokenizer: no tokenizer.json, and transformers "
                f"could not build a fast one from the directory ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); save "
                "the tokenizer with the model (tokenizer.save_pretrained(DIR))") from None
        path = None
    if d.st_lowercase:  # sentence-transformers lower-cases the text before tokenizing
        tok.normalizer = normalizers.Sequence(
            [normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer else []))
        path = None
    if path is None:
        path = work / "tokenizer.json"
        tok.save(str(path))
    return tok, path


def _max_length(d: Directory, config, tokenizer_config: dict) -> int:
    limits = []
    if d.st_max_length:
        limits.append(int(d.st_max_length))
    model_max = tokenizer_config.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if config.model_type in _OFFSET_POSITIONS:
            positions -= (config.pad_token_id or 0) + 1
        limits.append(int(positions))
    return max(1, min(limits)) if limits else 512


def _special_pad(tok, tokenizer_config: dict) -> int | None:
    pad = tokenizer_config.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    return tok.token_to_id(pad) if isinstance(pad, str) else None


def load(path: str | Path, name: str | None = None, task: str | None = None,
         pooling: str | None = None, source: Source | None = None,
         default_validation: Path | None = None,
         sentence_embedding: tuple[tuple[str, ...], bool] | None = None) -> SourceModel:
    """The SourceModel of a Hugging Face directory (see the module's docstring).

    ``sentence_embedding`` (pooling modes, L2-normalise) reads a directory without
    modules.json as that sentence encoder (the built-in model's copies)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the hub
    d = read_directory(Path(path))
    if (d.architecture or "").endswith("ForImageClassification"):
        from . import hf_images

        return hf_images.load(d, name, task, pooling)
    if sentence_embedding is not None and d.st_modes is None and natural_task(d) == "embedding":
        d.st_modes, d.st_normalize = sentence_embedding
        _sentence_bert_config(d)
    task = choose_task(d, task)
    if pooling is not None:
        if d.st_modes is not None:
            raise SourceError(f"--pooling: {d.root} is a sentence-transformers model; its "
                              "modules.json sets the pooling")
        if task != "embedding":
            raise SourceError(f"--pooling applies to feature extraction (--task embedding), "
                              f"not to {task}")
        if pooling not in ("mean", "cls"):
            raise SourceError(f"--pooling must be mean or cls (got {pooling!r})")
    config = read_config(d)
    labels = labels_of(d, config) if task != "embedding" else None
    multi_label = False
    if task == "classification":
        if config.problem_type == "regression":
            raise SourceError(f"{d.model_dir / 'config.json'}: problem_type regression is a "
                              "regression head, not a classifier")
        multi_label = config.problem_type == "multi_label_classification" or len(labels) == 1

    work = Path(tempfile.mkdtemp(prefix="optiserve-hf-"))
    try:
        tok, tokenizer_file = _tokenizer(d, work)
        vocab = getattr(config, "vocab_size", None)
        if vocab and tok.get_vocab_size(with_added_tokens=True) > vocab:
            raise SourceError(f"{d.model_dir}: the tokenizer has "
                              f"{tok.get_vocab_size(with_added_tokens=True)} tokens but the "
                              f"model's embedding table {vocab} (config.json vocab_size): not "
                              "this model's tokenizer")
        model, weights = load_model(d, task, config)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    tok_config_path = d.model_dir / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path, "tokenizer_config.json") \
        if tok_config_path.is_file() else {}
    pad_id = config.pad_token_id if config.pad_token_id is not None else _special_pad(
        tok, tok_config)

    from .hf_modules import SentenceEncoder, SequenceClassifier, TokenClassifier

    ids = [TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
           TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1])]
    text = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
    notes = [f"Hugging Face {d.architecture or config.model_type} from {d.root.name}/"
             f"{weights.relative_to(d.root).as_posix()}", *d.notes]
    postprocessing = None
    if task == "classification":
        module = SequenceClassifier(model, multi_label)
        probs = TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(labels)])
        outputs = [probs, TensorSpec(name="label", datatype="BYTES", shape=[-1])]
        if multi_label:
            outputs.append(TensorSpec(name="predicted", datatype="BOOL", shape=[-1, len(labels)]))
        model_outputs = [probs]
        postprocessing = Postprocessing(labels=labels, multi_label=multi_label)
        notes.append(f"text classification, {len(labels)} labels "
                     f"({', '.join(labels[:8])}{', ...' if len(labels) > 8 else ''}); "
                     f"{'sigmoid per label (multi-label)' if multi_label else 'softmax'}")
    elif task == "token-classification":
        module = TokenClassifier(model)
        model_outputs = [TensorSpec(name="token_probabilities", datatype="FP32",
                                    shape=[-1, -1, len(labels)])]
        outputs = [TensorSpec(name="token_labels", datatype="BYTES", shape=[-1, -1]),
                   TensorSpec(name="token_offsets", datatype="INT64", shape=[-1, -1, 2]),
                   TensorSpec(name="entities", datatype="BYTES", shape=[-1])]
        postprocessing = Postprocessing(labels=labels, aggregation="simple")
        notes.append(f"token classification, {len(labels)} labels; entities grouped as "
                     "transformers' pipeline does with aggregation_strategy='simple'")
    else:
        if d.st_modes is not None:
            modes, normalize = d.st_modes, d.st_normalize
        else:
            modes, normalize = (pooling or "mean",), False
            notes.append(f"feature extraction: {modes[0]} pooling of the last token states")
        module = SentenceEncoder(model, modes, normalize)
        dim = config.hidden_size * len(modes)
        model_outputs = [TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim])]
        outputs = list(model_outputs)
    max_length = _max_length(d, config, tok_config)
    side = tok_config.get("truncation_side", "right")
    preprocessing = TextPreprocessing(
        tokenizer_file="tokenizer.json", max_length=max_length, text_input="text",
        ids_input="input_ids", mask_input="attention_mask", pad_id=pad_id,
        truncation_side=side if side in ("left", "right") else "right")
    transformer = None
    if config.model_type in _BERT_LIKE:
        hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads")
        transformer = {"model_type": "bert", "num_heads": heads, "hidden_size": hidden}
    src = SourceModel(
        name=name or _default_name(d.root),
        source=source or Source(kind="huggingface", ref=str(d.root.resolve()),
                                sha256=sha256_file(weights)),
        task=task,
        model_signature=Signature(inputs=ids, outputs=model_outputs),
        signature=Signature(inputs=text, outputs=outputs),
        preprocessing=preprocessing,
        postprocessing=postprocessing,
        extra_files={"tokenizer.json": tokenizer_file},
        torch_module=module.eval(),
        transformer=transformer,
        default_validation=default_validation or DATA / "minilm_validation.txt",
        notes=notes,
    )
    weakref.finalize(src, shutil.rmtree, work, True)
    return src


def _default_name(root: Path) -> str:
    import re

    name = re.sub(r"[^a-zA-Z0-9_.-]", "-", root.resolve().name).strip("-._") or "model"
    return name[:63]


__all__ = ["HF_TASKS", "choose_task", "load", "natural_task", "read_directory"]
