"""The default layout rule: CPUs and GPUs -> gateway replicas, model replicas x threads."""

from __future__ import annotations

import pytest

from serving.config import build_serve_config
from optiserve.local import requested_cpus
from optiserve.sizing import plan
from serving.settings import settings


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 96])
@pytest.mark.parametrize("versions", [1, 2, 3])
def test_the_layout_fills_the_machine_and_fits_in_it(cpus, versions):
    lay = plan(cpus, versions=versions)
    model_threads = versions * lay.version_replicas * lay.threads
    reserved = lay.gateway_replicas * lay.gateway_cpus \
        + versions * lay.version_replicas * lay.cpus_per_replica
    assert 1 <= lay.threads <= settings().max_threads
    assert reserved <= max(cpus, 1.0 + lay.gateway_cpus) + 1e-6  # Ray can place it all
    # every CPU the gateway does not need runs a model thread (give or take rounding)
    spare = cpus - lay.gateway_replicas * lay.gateway_cpus
    assert model_threads >= min(spare, versions) - 1e-6
    assert model_threads <= max(spare + versions * lay.version_replicas, versions)


def test_gateways_scale_with_cpus_and_gpus():
    assert plan(2).gateway_replicas == 1 and plan(2).gateway_cpus == 0.25
    assert plan(8).gateway_replicas == 1 and plan(8).gateway_cpus == 1.0
    assert plan(16).gateway_replicas == 2 and plan(64).gateway_replicas == 8
    assert plan(8, gpus=4).gateway_replicas == 4  # the ingress limits on GPUs


def test_gpus_get_one_replica_each():
    lay = plan(16, gpus=2)
    assert (lay.version_replicas, lay.gpus_per_replica) == (2, 1.0)
    assert plan(16, gpus=1, gpus_per_replica=0.5).version_replicas == 2


def test_flags_override_the_rule():
    assert plan(16, replicas=3).version_replicas == 3
    assert plan(16, threads=2).threads == 2 and plan(16, threads=2).version_replicas == 7
    lay = plan(16, cpus_per_replica=2)
    assert (lay.cpus_per_replica, lay.threads, lay.version_replicas) == (2, 2, 7)
    assert plan(16, gateway_replicas=5).gateway_replicas == 5
    with pytest.raises(ValueError):
        plan(0)


def test_the_serve_config_carries_the_layout():
    lay = plan(16)
    doc = build_serve_config("/m", [("minilm", 1)], version_cpus=lay.cpus_per_replica,
                             version_replicas=lay.version_replicas,
                             gateway_replicas=lay.gateway_replicas,
                             gateway_cpus=lay.gateway_cpus, threads=lay.threads)
    gw, version = (a["deployments"][0] for a in doc["applications"])
    assert gw["num_replicas"] == 2 and gw["ray_actor_options"]["num_cpus"] == 1.0
    assert version["num_replicas"] == lay.version_replicas
    assert version["user_config"] == {"intra_op_threads": lay.threads}
    assert requested_cpus(doc) <= 16


def test_serving_a_cuda_version_where_no_gpu_shows_stops_with_the_reason(tmp_path):
    """Before Ray starts: otherwise every replica fails at load, far from the command line."""
    from serving.repository import ModelRepository
    from tests.helpers import run_cli
    from tests.serving.test_gateway import publish

    repo = ModelRepository(tmp_path / "repo")
    publish(repo, "ReduceSum")
    cpu = repo.get("reducer", 1).manifest

    def fill(staging):
        (staging / "model.onnx").write_bytes((repo.get("reducer", 1).path / "model.onnx")
                                             .read_bytes())
        return cpu.model_copy(update={"device": "cuda", "variant": "torch-fp16-cuda"})

    repo.publish("reducer", fill)
    r = run_cli("serve", "reducer:2", "--repository", str(repo.root),
                env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("reducer:2 (torch-fp16-cuda) run(s) on CUDA, but this machine shows no GPU"
            in " ".join((r.stdout + r.stderr).split()))
    # a CPU version of the same model serves as before (its config prints)
    r = run_cli("serve", "reducer:1", "--repository", str(repo.root), "--print-config")
    assert r.returncode == 0, r.stderr
