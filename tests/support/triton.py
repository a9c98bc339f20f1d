"""Triton Inference Server 2.51 on CPU, for the benchmarks that compare optiserve with it and the
tests that point optiserve's clients at it.

Triton runs here from the binary inside the ``nvidia-pytriton==0.7.0`` wheel (python backend
only), installed on first use into a cache directory: for the benchmarks with ``numpy<2``,
onnxruntime and tokenizers (:data:`TRITON_PACKAGES`); for the tests, whose models are pure
numpy, with the wheel and ``numpy<2`` alone (:data:`TRITON_LEAN_PACKAGES`). The benchmarks'
minilm model (``model.py`` written here) tokenizes the merged requests once with the version's
``tokenizer.json`` and runs one ONNX Runtime call per batch on the same ``model.onnx`` optiserve
serves; a tensor model (:func:`triton_tensor_model`) concatenates the merged requests' inputs and
runs one ONNX Runtime call per batch, its inputs and outputs those of the manifest's
``model_signature``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .harness import free_port

TRITON_PACKAGES = ["nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime", "tokenizers"]

#: enough for python-backend models written in numpy: the server, backend and stub come in the
#: wheel, and the stub imports numpy only. Installed without the wheel's own dependencies
#: (tritonclient, grpcio, typer, ... are pytriton's Python API, which Triton never imports):
#: a fresh install is then two wheels instead of ~60 packages
TRITON_LEAN_PACKAGES = ["nvidia-pytriton==0.7.0", "numpy<2"]


#: the ONNX Runtime session both python-backend models open: the same options as optiserve's
#: runtime (intra-op threads from the model's parameters, no spinning)
_ORT_SESSION = """\
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(p["threads"])
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(p["model"], so, providers=["CPUExecutionProvider"])
"""


TRITON_MODEL_PY = '''\
"""minilm for Triton's python backend: tokenize the merged requests once, one ORT call."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        cfg = json.loads(args["model_config"])["parameters"]
        p = {k: v["string_value"] for k, v in cfg.items()}
        self.tok = Tokenizer.from_file(p["tokenizer"])
        self.tok.no_padding()
        self.tok.enable_truncation(int(p["max_length"]))
        pad = self.tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
__ORT_SESSION__
        self.ids, self.mask, self.out = p["ids_input"], p["mask_input"], p["output"]

    def execute(self, requests):
        # an exception escaping here can take the stub down: answer every request instead
        try:
            counts, texts = [], []
            for r in requests:
                t = pb_utils.get_input_tensor_by_name(r, "text").as_numpy().reshape(-1)
                counts.append(len(t))
                texts += [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in t]
            rows = [e.ids for e in self.tok.encode_batch(texts)]
            width = max(len(x) for x in rows)
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, x in enumerate(rows):
                ids[i, :len(x)] = x
                mask[i, :len(x)] = 1
            feeds = {self.ids: ids}
            if self.mask:
                feeds[self.mask] = mask
            emb = self.sess.run([self.out], feeds)[0]
            out, i = [], 0
            for n in counts:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.out, emb[i:i + n])]))
                i += n
            return out
        except Exception as e:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"minilm: {e}"))
                    for _ in requests]
'''.replace("__ORT_SESSION__\n", _ORT_SESSION)


TRITON_TENSOR_MODEL_PY = '''\
"""An ONNX model for Triton's python backend: the merged requests' inputs concatenated along
the batch dimension, one ORT call, the outputs cut back per request."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg["parameters"].items()}
__ORT_SESSION__
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]

    def execute(self, requests):
        # an exception escaping here can take the stub down: answer every request instead
        try:
            parts = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests]
                     for n in self.inputs}
            counts = [len(a) for a in parts[self.inputs[0]]]
            outs = self.sess.run(self.outputs, {n: np.concatenate(v) for n, v in parts.items()})
            res, i = [], 0
            for n in counts:
                res.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, o[i:i + n]) for name, o in zip(self.outputs, outs)]))
                i += n
            return res
        except Exception as e:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"model: {e}"))
                    for _ in requests]
'''.replace("__ORT_SESSION__\n", _ORT_SESSION)


def triton_install(cache: Path, packages: Sequence[str] = TRITON_PACKAGES,
                   deps: bool = True) -> tuple[Path, dict]:
    """Triton's directory (binary, python backend and stub) and the environment it runs with;
    the venv (``packages``, with their dependencies unless ``deps`` is false) and the copy out
    of the wheel are made in ``cache`` on first use. A cache holds one package set: give each
    set its own."""
    venv = cache / "triton-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"installing Triton's venv in {venv} ...", flush=True)
        # built aside and renamed when complete: an interrupted install is not taken for one
        # (python finds its venv from pyvenv.cfg beside bin/python, so the rename is safe)
        part = cache / "triton-venv.partial"
        shutil.rmtree(part, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(part)], check=True)
        subprocess.run([str(part / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *([] if deps else ["--no-deps"]),
                        *packages], check=True)
        part.rename(venv)
    info = json.loads(subprocess.run(
        [str(py), "-c", ("import json, sys, sysconfig; print(json.dumps(["
                         "sysconfig.get_paths()['purelib'], sysconfig.get_config_var('LIBDIR'), "
                         "f'{sys.version_info[0]}.{sys.version_info[1]}']))")],
        capture_output=True, text=True, check=True).stdout)
    site, libdir, pyver = Path(info[0]), info[1], info[2]
    server = cache / "tritonserver"
    if not (server / "backends" / "python" / "triton_python_backend_stub").exists():
        shutil.rmtree(server, ignore_errors=True)
        shutil.copytree(site / "pytriton" / "tritonserver", server)
        shutil.copy2(server / "python_backend_stubs" / pyver / "triton_python_backend_stub",
                     server / "backends" / "python" / "triton_python_backend_stub")
    # the stub embeds Python, which finds its prefix (and so the venv) from python3 on PATH
    env = {"LD_LIBRARY_PATH": f"{libdir}:{site / 'nvidia_pytriton.libs'}",
           "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    return server, env


def triton_repository(work: Path, version_dir: Path, manifest, threads: int,
                      delay_us: int) -> Path:
    pre = manifest.preprocessing
    models = work / "triton-models"
    (models / "minilm" / "1").mkdir(parents=True, exist_ok=True)
    (models / "minilm" / "1" / "model.py").write_text(TRITON_MODEL_PY)
    params = {"model": version_dir / manifest.model_file,
              "tokenizer": version_dir / pre.tokenizer_file, "max_length": pre.max_length,
              "threads": threads, "ids_input": pre.ids_input, "mask_input": pre.mask_input or "",
              "output": manifest.model_signature.outputs[0].name}
    dim = manifest.signature.outputs[0].shape[-1]
    _write_config(models / "minilm", manifest.batching.max_batch_size,
                  '{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }',
                  f'{{ name: "embedding" data_type: TYPE_FP32 dims: [ {dim} ] }}', delay_us,
                  params)
    return models


def _write_config(folder: Path, max_batch_size: int, inputs: str, outputs: str, delay_us: int,
                  params: dict) -> None:
    """A python-backend model's config.pbtxt: one CPU instance, dynamic batching."""
    (folder / "config.pbtxt").write_text(
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [ {inputs} ]\n"
        f"output [ {outputs} ]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        "parameters [\n" + ",\n".join(
            f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
        + "\n]\n")


def _triton_type(datatype: str) -> str:
    """An OIP datatype as Triton's config names it (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def triton_tensor_model(models: Path, name: str, version_dir: Path, manifest, threads: int,
                        delay_us: int, max_batch_size: int) -> Path:
    """A python-backend model ``name`` in Triton's repository ``models`` running the version's
    ``model.onnx`` with ONNX Runtime (``threads`` intra-op threads, no spinning): inputs and
    outputs those of the manifest's ``model_signature`` (their first dimension the batch),
    dynamic batching up to ``max_batch_size`` rows with ``delay_us`` of queue delay."""
    sig = manifest.model_signature

    def tensors(specs) -> str:
        return ", ".join(
            f'{{ name: "{t.name}" data_type: {_triton_type(t.datatype)} '
            f'dims: [ {", ".join(str(d) for d in t.shape[1:])} ] }}' for t in specs)

    folder = models / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(TRITON_TENSOR_MODEL_PY)
    params = {"model": version_dir / manifest.model_file, "threads": threads}
    _write_config(folder, max_batch_size, tensors(sig.inputs), tensors(sig.outputs), delay_us,
                  params)
    return folder


def triton_command(server: Path, models: Path, port: int, grpc_port: int | None = None,
                   metrics_port: int | None = None) -> list[str]:
    """Triton serving ``models`` on loopback: HTTP on ``port``, gRPC and metrics on the ports
    given (free ones when not)."""
    return [str(server / "bin" / "tritonserver"), f"--model-repository={models}",
            f"--backend-directory={server / 'backends'}",
            f"--cache-directory={server / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port or free_port()}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port or free_port()}",
            "--exit-timeout-secs=20", "--log-verbose=0"]

