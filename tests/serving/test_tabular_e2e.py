"""Tabular end to end: the built-in breast-cancer trained, feature-selected, converted and
published by the real CLI, served by real Ray Serve, queried with the real tritonclient."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from optimizers.sources import breast_cancer
from optimizers.tabular.data import split
from serving import metrics as M
from serving.config import GATEWAY_APP, build_serve_config
from serving.repository import ModelRepository
from tests.helpers import ServeProcess, run_cli
from tests.serving.conftest import version_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """(repository, report text, held-out rows, the reference pipeline)."""
    root = tmp_path_factory.mktemp("tabular")
    repo, report = root / "repo", root / "report"
    result = run_cli("optimize", "breast-cancer", "--select-features", "5,10,20",
                     "--publish", "all", "--report", str(report), "--repository", str(repo),
                     "--min-time", "0.05", "--batch-sizes", "1,32", "-q")
    assert result.returncode == 0, result.stderr + result.stdout
    x, y, _ = breast_cancer.dataset()
    tr, ho = split(y)
    reference = breast_cancer.build_estimator().fit(x[tr], y[tr])
    return repo, (report / "report.md").read_text(), x[ho], reference


def chosen_variant(report: str) -> str:
    return report.split("**Chosen: `", 1)[1].split("`", 1)[0]


BATCH_DELAY_MS = 20.0
#: concurrent one-row requests sent to the sklearn version
REQUESTS = 32


@pytest.fixture(scope="module")
def server(tabular, tmp_path_factory):
    repo_dir, report = tabular[0], tabular[1]
    chosen = version_of(repo_dir, "breast-cancer", chosen_variant(report))
    sk = version_of(repo_dir, "breast-cancer", "sklearn")
    doc = build_serve_config(str(repo_dir), [("breast-cancer", chosen), ("breast-cancer", sk)],
                             version_cpus=0.5)
    # the sklearn version waits up to 20 ms for batch-mates: its recommended delay (0.73 ms
    # here, one batch-1 call) is shorter than the gap between concurrent requests' arrival at
    # the gateway on a 2-core machine, where 32 of them ran as 32 batches
    gateway = next(a for a in doc["applications"] if a["name"] == GATEWAY_APP)
    gateway["deployments"][0]["user_config"]["models"]["breast-cancer"]["versions"][sk][
        "max_delay_ms"] = BATCH_DELAY_MS
    proc = ServeProcess(doc, tmp_path_factory.mktemp("tabular-serve")).start()
    proc.versions = {"chosen": chosen, "sklearn": sk}
    yield proc
    assert proc.stop() == 0


def test_report_shows_the_sweep_and_publishes_the_chosen_point(tabular):
    repo_dir, report, _, _ = tabular
    assert "## Feature selection" in report
    for k in (5, 10, 20):
        assert f"| {k} | " in report
    # the fewest features within the F1 budget (k=20 on this data, see the README)
    assert chosen_variant(report).startswith("select-k")
    repo = ModelRepository(repo_dir)
    variants = {repo.manifest("breast-cancer", v).variant for v in repo.versions("breast-cancer")}
    assert {"sklearn", "onnx-fp32", chosen_variant(report)} <= variants
    assert not variants & {"onnx-int8-dynamic", "onnx-int8-static"}  # trees: nothing to quantize


def test_reduced_model_takes_the_full_feature_vector_over_tritonclient(tabular, server):
    import tritonclient.http as th

    _, _, rows, reference = tabular
    rows = rows[:32]  # the largest batch benchmarked: the version's max_batch_size
    reduced = server.versions["chosen"]
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    meta = client.get_model_metadata("breast-cancer", str(reduced))
    assert meta["inputs"][0]["shape"] == [-1, 30]
    for dtype, np_dtype in (("FP32", np.float32), ("FP64", np.float64)):
        inp = th.InferInput("features", list(rows.shape), dtype)
        inp.set_data_from_numpy(rows.astype(np_dtype), binary_data=True)
        res = client.infer("breast-cancer", [inp], model_version=str(reduced),
                           outputs=[th.InferRequestedOutput("probabilities"),
                                    th.InferRequestedOutput("label")])
        probs, label = res.as_numpy("probabilities"), res.as_numpy("label")
        assert probs.shape == (len(rows), 2) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert np.array_equal(label, probs.argmax(1))
        # a retrained model on fewer features: mostly the reference's answers
        assert np.mean(label == reference.predict(rows)) > 0.95


def test_sklearn_reference_served_rows_batched_like_any_version(tabular, server):
    """Concurrent one-row requests to the scikit-learn version answer like the reference and
    are merged into batches, as the gateway's own metrics (Ray's exporter) count them."""
    import tritonclient.http as th

    repo_dir, _, rows, reference = tabular
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=16)
    sk = str(server.versions["sklearn"])
    assert ModelRepository(repo_dir).manifest("breast-cancer", int(sk)) \
        .batching.max_batch_size > 1
    before = batch_counts(server, sk)
    pending = []
    for i in range(REQUESTS):
        inp = th.InferInput("features", [1, 30], "FP64")
        inp.set_data_from_numpy(rows[i:i + 1], binary_data=False)
        pending.append(client.async_infer("breast-cancer", [inp], model_version=sk))
    got = np.concatenate([p.get_result().as_numpy("probabilities") for p in pending])
    want = reference.predict_proba(rows[:REQUESTS].astype(np.float32))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # every row went through the batcher, in fewer batches than requests
    deadline = time.monotonic() + 30
    while (after := batch_counts(server, sk))[0] - before[0] < REQUESTS and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    rows_batched, batches = after[0] - before[0], after[1] - before[1]
    assert rows_batched == REQUESTS, (before, after)
    assert batches < REQUESTS, f"{REQUESTS} concurrent requests ran as {batches} batches"



def batch_counts(server, version: str) -> tuple[float, float]:
    """(rows batched, batches) of breast-cancer's ``version`` so far, from the server's Ray
    metrics endpoint (0 before its first batch)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    sel = 'model="breast-cancer"'
    want = {M.BATCH_ROWS.prom: 0, M.BATCH_SIZE.prom + "_count": 1}
    out = [0.0, 0.0]
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in want and sel in rest and f'version="{version}"' in rest:
            out[want[name]] += float(line.rsplit(" ", 1)[1])
    return out[0], out[1]


def test_bench_sends_rows_from_csv(tabular, server, tmp_path):
    rows = tabular[2]
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(",".join(f"{v:.6g}" for v in r) for r in rows[:20]))
    result = run_cli("bench", f"http://127.0.0.1:{server.port}", "--model", "breast-cancer",
                     "--input-file", str(csv), "--rows", "4", "--concurrency", "2",
                     "--duration", "1", "--warmup", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] > 0 and not doc["errors"], doc
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    result = run_cli("bench", f"http://127.0.0.1:{server.port}", "--model", "breast-cancer",
                     "--input-file", str(bad), "--requests", "1")
    assert result.returncode == 1 and "3 columns, expected 30" in result.stderr
