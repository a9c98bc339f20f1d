"""``optiserve bench`` against a real Triton Inference Server 2.51 (the binary of the
``nvidia-pytriton`` wheel, python backend), over OIP REST and gRPC: the requests are shaped from
Triton's own model metadata (its batch dimension included), every one is answered, and Triton's
statistics count each request and row the bench sent.

The three models are numpy functions written here (no weights): a text model with minilm's
contract on Triton (``text`` BYTES, dims ``[1]`` under ``max_batch_size``: metadata ``[-1, 1]``),
a tensor model (FP32 ``[-1, 16]``) and one without a batch dimension (``max_batch_size: 0``,
FP32 ``[3, 5]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import http, run_cli
from tests.support.harness import free_port
from tests.support.loadgen import Server
from tests.support.triton import TRITON_LEAN_PACKAGES, triton_command, triton_install

pytestmark = pytest.mark.slow

#: Triton's lean venv is reused by later runs (and by the next test session of one CI run)
CACHE = Path.home() / ".cache" / "optiserve-tests" / "triton"

#: one numpy model.py for the three models: per row, features of its input that show the model
#: read the request (a wrong shape or datatype is refused by Triton before execute)
MODEL_PY = '''\
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.inp, self.out = cfg["input"][0]["name"], cfg["output"][0]["name"]
        self.batched = cfg["max_batch_size"] > 0

    def execute(self, requests):
        out = []
        for r in requests:
            # an exception escaping here can take the stub down: answer with an error instead
            try:
                x = pb_utils.get_input_tensor_by_name(r, self.inp).as_numpy()
                if x.dtype == np.object_:  # [n, 1] strings: length, spaces, first, last byte
                    y = np.array([[len(s), s.count(b" "), s[:1][0] if s else 0,
                                   s[-1:][0] if s else 0] for s in x.reshape(-1)],
                                 dtype=np.float32).reshape(-1, 4)
                else:  # sum and max over the last axis (and over the first with no batch)
                    y = np.stack([x.sum(-1), x.max(-1)], -1).astype(np.float32)
                    if not self.batched:
                        y = y.sum(0)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.out, y)]))
            except Exception as e:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return out
'''

#: name: (max_batch_size, input, output); dims exclude the batch dimension when there is one
MODELS = {
    "text": (8, ("text", "TYPE_STRING", [1]), ("features", "TYPE_FP32", [4])),
    "tensor": (8, ("x", "TYPE_FP32", [16]), ("y", "TYPE_FP32", [2])),
    "nobatch": (0, ("x", "TYPE_FP32", [3, 5]), ("y", "TYPE_FP32", [2])),
}


def write_models(root: Path) -> Path:
    for name, (mbs, (iname, itype, idims), (oname, otype, odims)) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MODEL_PY)
        (root / name / "config.pbtxt").write_text(
            f'backend: "python"\nmax_batch_size: {mbs}\n'
            f'input [ {{ name: "{iname}" data_type: {itype} dims: {idims} }} ]\n'
            f'output [ {{ name: "{oname}" data_type: {otype} dims: {odims} }} ]\n'
            + ("dynamic_batching { max_queue_delay_microseconds: 2000 }\n" if mbs else "")
            + "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    return root


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """Triton 2.51 serving the three models on loopback: (HTTP URL, gRPC host:port)."""
    root = tmp_path_factory.mktemp("triton")
    server_dir, env = triton_install(CACHE, TRITON_LEAN_PACKAGES, deps=False)
    models = write_models(root / "models")
    http_port, grpc_port = free_port(), free_port()
    server = Server("triton", triton_command(server_dir, models, http_port, grpc_port),
                    http_port, root / "triton.log", True, env, ready_path="/v2/health/ready")
    server.start(timeout=120)
    try:
        yield server.url, f"127.0.0.1:{grpc_port}"
    finally:
        server.stop()


def stats(url: str, model: str) -> tuple[int, int, int]:
    """Triton's counts for a model: (requests succeeded, requests failed, rows inferred)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    inf = s["inference_stats"]
    return inf["success"]["count"], inf["fail"]["count"], s["inference_count"]


def bench(target: str, model: str, protocol: str, n: int, *args: str) -> dict:
    """``optiserve bench`` as a user runs it: exactly ``n`` requests (no warm-up, so all are
    measured; the duration only bounds the run), its ``--json`` result."""
    r = run_cli("bench", target, "--model", model, "--protocol", protocol, "--requests", str(n),
                "--concurrency", "4", "--warmup", "0", "--duration", "60", "--timeout", "20",
                "--json", *args, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs of each kind the bench reads: text lines, tabular rows (.npy, .csv) and named
    tensors (.npz)."""
    root = tmp_path_factory.mktemp("bench-inputs")
    rng = np.random.default_rng(7)
    (root / "texts.txt").write_text("a short one\n\nThe weather in Lyon is mild today.\n"
                                    "ok\nHow do I reset my password?\n")
    rows = rng.standard_normal((10, 16)).astype(np.float32)
    np.save(root / "rows.npy", rows)
    np.savetxt(root / "rows.csv", rows, delimiter=",")
    np.savez(root / "rows.npz", x=rows)
    # one [3, 5] tensor per request for the model without a batch dimension
    np.savez(root / "tensors.npz", x=rng.standard_normal((6, 3, 5)).astype(np.float32))
    return root


def test_triton_declares_what_the_cases_cover(triton):
    """The premise: Triton's metadata has the batch dimension of its batched models and none
    for the other, over REST and gRPC (where dimensions are int64, strings in JSON)."""
    import tritonclient.grpc as tg

    http_url, grpc_addr = triton
    expected = {"text": ("BYTES", [-1, 1]), "tensor": ("FP32", [-1, 16]),
                "nobatch": ("FP32", [3, 5])}
    client = tg.InferenceServerClient(grpc_addr)
    for model, (datatype, shape) in expected.items():
        status, _, body = http("GET", f"{http_url}/v2/models/{model}")
        assert status == 200, body
        (rest,) = json.loads(body)["inputs"]
        (grpc,) = client.get_model_metadata(model, as_json=True)["inputs"]
        assert (rest["datatype"], rest["shape"]) == (datatype, shape)
        assert (grpc["datatype"], [int(d) for d in grpc["shape"]]) == (datatype, shape)
    client.close()


#: (model, rows per request, --input-file or None, extra flags)
CASES = [
    ("text", 1, None, ()),               # the built-in sentences, Triton's [-1, 1]
    ("text", 3, "texts.txt", ()),        # three lines per request: [3, 1]
    ("text", 2, "texts.txt", ("--json-body",)),
    ("tensor", 1, None, ()),             # random rows of [1, 16]
    ("tensor", 4, "rows.npy", ()),
    ("tensor", 2, "rows.csv", ("--json-body",)),
    ("tensor", 3, "rows.npz", ()),
    ("nobatch", 1, None, ()),            # no batch dimension: [3, 5] as declared
    ("nobatch", 1, "tensors.npz", ()),
]


#: each case over REST and gRPC (JSON bodies are REST's: gRPC sends raw tensors), and a few
#: over gRPC's ModelStreamInfer (--streaming)
STREAMED = {("text", 1, None), ("tensor", 4, "rows.npy"), ("nobatch", 1, "tensors.npz")}
RUNS = [(protocol, *case) for case in CASES for protocol in ("http", "grpc", "grpc-stream")
        if protocol == "http" or ("--json-body" not in case[3]
                                  and (protocol == "grpc" or case[:3] in STREAMED))]


@pytest.mark.parametrize("protocol,model,rows,input_file,extra", RUNS,
                         ids=[f"{r[1]}-rows{r[2]}-{r[3] or 'builtin'}{''.join(r[4])}-{r[0]}"
                              for r in RUNS])
def test_bench_against_triton(triton, files, protocol, model, rows, input_file, extra):
    http_url, grpc_addr = triton
    n = 24
    before = stats(http_url, model)
    args = ["--rows", str(rows), *extra]
    if input_file:
        args += ["--input-file", str(files / input_file)]
    if protocol == "grpc-stream":
        protocol, args = "grpc", [*args, "--streaming"]
    result = bench(http_url if protocol == "http" else grpc_addr, model, protocol, n, *args)
    after = stats(http_url, model)
    assert result["errors"] == {}, result
    assert result["requests"] == result["ok"] == n, result
    # Triton ran every request the bench counted, each with the rows the bench put in it
    assert after[0] - before[0] == n, (before, after)
    assert after[1] == before[1], (before, after)
    assert after[2] - before[2] == n * rows, (before, after)


def test_bench_names_a_missing_model(triton):
    """Metadata of a model Triton does not serve: a clear error naming it, over both protocols."""
    http_url, grpc_addr = triton
    for target, protocol in ((http_url, "http"), (grpc_addr, "grpc")):
        r = run_cli("bench", target, "--model", "absent", "--protocol", protocol,
                    "--requests", "1", "--json", timeout=60)
        assert r.returncode != 0
        assert "absent" in r.stdout + r.stderr, r.stdout + r.stderr


def test_bench_refuses_rows_without_a_batch_dimension(triton, files):
    """Rows are stacked on the batch dimension: with none, --rows 2 and tabular rows are refused
    before any request is sent, naming the input."""
    http_url, grpc_addr = triton
    before = stats(http_url, "nobatch")
    rows_2 = (["--rows", "2"], "input 'x' of model 'nobatch' has no batch dimension")
    csv = (["--input-file", str(files / "rows.csv")], "takes x [3, 5]; use .npz")
    for target, protocol, (args, message) in ((http_url, "http", rows_2),
                                              (grpc_addr, "grpc", rows_2),
                                              (http_url, "http", csv)):
        r = run_cli("bench", target, "--model", "nobatch", "--protocol", protocol,
                    "--requests", "4", "--json", *args, timeout=60)
        assert r.returncode != 0, r.stdout
        assert message in " ".join((r.stdout + r.stderr).split()), r.stdout + r.stderr
    assert stats(http_url, "nobatch") == before
