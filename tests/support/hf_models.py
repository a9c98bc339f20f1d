"""Tiny Hugging Face model directories built offline, as a user's ``save_pretrained`` writes
them: randomly initialised BERT, DistilBERT and RoBERTa sequence classifiers and a BERT token
classifier, each with a tokenizer trained with the ``tokenizers`` library on the built-in
distillation corpus (``optimizers.distill.corpus``), plus broken directories for the error
paths. Nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENT = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
#: Rows per position table: long enough for the validation sentences, small enough that a
#: long text is truncated (tests of the truncation note).
MAX_POSITIONS = 64


def corpus(limit: int = 4000) -> list[str]:
    from optimizers.distill.corpus import load_corpus
    from optimizers.validation import read_texts
    from optimizers.sources.minilm import DATA

    texts, _ = load_corpus(None)
    return texts[:limit] + read_texts(DATA / "minilm_validation.txt")


def wordpiece_tokenizer(vocab_size: int = 1500):
    """A lower-casing BERT WordPiece tokenizer: [CLS] text [SEP], [PAD] = 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus(), WordPieceTrainer(vocab_size=vocab_size,
                                                       special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    return tok, {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "sep_token": "[SEP]", "mask_token": "[MASK]"}


def bpe_tokenizer(vocab_size: int = 1500):
    """A byte-level BPE tokenizer like RoBERTa's: <s> text </s>, <pad> = 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus(), BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "pad_token": "<pad>", "cls_token": "<s>", "sep_token": "</s>",
                 "mask_token": "<mask>"}


def save_tokenizer(tok, special: dict, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS,
                                   **special)
    fast.save_pretrained(str(out))


def _spread(model, std: float) -> None:
    """Weights larger than the default init, so that a random model's classes and token
    labels differ from row to row (every output of the default init is near uniform)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, std)


def _labels(names: list[str]) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def bert_classifier(out: Path, labels: list[str] = SENTIMENT, multi_label: bool = False,
                    seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1500, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=hidden * 2,
                        max_position_embeddings=MAX_POSITIONS, pad_token_id=0,
                        problem_type="multi_label_classification" if multi_label else None,
                        **_labels(labels))
    model = BertForSequenceClassification(config).eval()
    _spread(model, 0.3)
    model.save_pretrained(str(out))
    save_tokenizer(*wordpiece_tokenizer(), out)
    return out


def distilbert_classifier(out: Path, labels: list[str] = SENTIMENT, seed: int = 1) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=1500, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                              max_position_embeddings=MAX_POSITIONS, pad_token_id=0,
                              **_labels(labels))
    model = DistilBertForSequenceClassification(config).eval()
    _spread(model, 0.3)
    model.save_pretrained(str(out))
    save_tokenizer(*wordpiece_tokenizer(), out)
    return out


def roberta_classifier(out: Path, labels: list[str] = SENTIMENT, seed: int = 2) -> Path:
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=1500, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=MAX_POSITIONS + 2, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                           **_labels(labels))
    model = RobertaForSequenceClassification(config).eval()
    _spread(model, 0.5)
    model.save_pretrained(str(out))
    save_tokenizer(*bpe_tokenizer(), out)
    return out


def bert_token_classifier(out: Path, labels: list[str] = NER_LABELS, seed: int = 3) -> Path:
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1500, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=MAX_POSITIONS, pad_token_id=0,
                        **_labels(labels))
    model = BertForTokenClassification(config).eval()
    _spread(model, 0.3)
    with torch.no_grad():  # most tokens "O", as in real text, and entities of a few tokens
        model.classifier.bias[0] += 3.0
    model.save_pretrained(str(out))
    save_tokenizer(*wordpiece_tokenizer(), out)
    return out


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2))


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def base_sized_classifier(out: Path, layers: int = 6, hidden: int = 768, seed: int = 0,
                          labels: list[str] = SENTIMENT) -> Path:
    """A BERT-base-wide classifier (``layers`` x ``hidden``, 12 heads, FFN 4x) with random
    weights and a real English WordPiece vocabulary (the minilm package's uncased tokenizer):
    the size of a typical fine-tuned classifier, for speed measurements. The encoder keeps
    BERT's own initialisation; the head is drawn wider so that classes are decided by clear
    margins, as in a trained classifier, rather than by near ties: centred and scaled on
    sentences of the built-in corpus (never the validation sentences), so that every class is
    predicted and the logits spread like a trained model's."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    from optimizers.sources.minilm import package_dir as model_dir

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
                        max_position_embeddings=512, **_labels(labels))
    model = BertForSequenceClassification(config).eval()
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(128)
    pooled = []
    with torch.inference_mode():
        for text in corpus(limit=256)[:256]:
            ids = torch.tensor([tok.encode(text).ids])
            pooled.append(model.bert(input_ids=ids).pooler_output[0])
    pooled = torch.stack(pooled)
    with torch.no_grad():
        w = torch.randn(len(labels), hidden)
        logits = (pooled - pooled.mean(0)) @ w.T
        w *= 2.0 / logits.std()  # logits spread ~2 across sentences
        model.classifier.weight.copy_(w)
        model.classifier.bias.copy_(-(pooled.mean(0) @ w.T))
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(model_dir() / name, out / name)
    return out
