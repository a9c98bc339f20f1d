"""What an operations team meets on the first day with the chart, each rendered with the real
helm binary: one image setting for every image, disruption budgets that let nodes drain, disk
sized for Ray's logs, the KubeRay operator's and Prometheus' places as values."""

from __future__ import annotations

import re

import pytest

from .conftest import CI_VALUES, helm_template, only, pod_templates, rayservice

REGISTRY = "registry.example.com/team/optiserve"


def _containers(objs: list[dict]) -> dict[str, dict]:
    out = {}
    for group, t in pod_templates(rayservice(objs)).items():
        for c in t["spec"]["containers"] + t["spec"].get("initContainers", []):
            out[f"ray-{group}/{c['name']}"] = c
    for kind in ("Deployment",):
        for d in only(objs, kind):
            for c in d["spec"]["template"]["spec"]["containers"]:
                out[f"{d['metadata']['name']}/{c['name']}"] = c
    for p in only(objs, "Pod"):
        for c in p["spec"]["containers"]:
            out[f"{p['metadata']['name']}/{c['name']}"] = c
    return out


def test_one_image_repository_drives_every_optiserve_image(helm):
    """Overriding image.repository alone moves every optiserve image (serving, GPU, the init
    step in every Ray pod, the controller, the test pod) to that registry: an init image left
    at the default registry would keep every Ray pod, head included, in ErrImagePull."""
    objs = helm_template(helm, "-f", str(CI_VALUES["gpu"]), "--set",
                         f"image.repository={REGISTRY}")
    images = {where: c["image"] for where, c in _containers(objs).items()}
    assert any(w.endswith("/verify-models") and "ray-head" in w for w in images)
    for where, image in images.items():
        assert image.startswith(REGISTRY + ":"), (where, image)
    tags = {image.rsplit(":", 1)[1].rsplit("-", 1)[1] for image in images.values()}
    assert tags == {"cpu", "gpu", "init", "controller"}
    # a per-image repository still wins where one is set
    objs = helm_template(helm, "--set", f"image.repository={REGISTRY}",
                         "--set", "initImage.repository=other.example.com/init")
    init = {c["image"] for w, c in _containers(objs).items() if w.endswith("/verify-models")}
    assert init == {"other.example.com/init:0.1.0-init"}


def test_disruption_budgets_let_nodes_drain(rendered):
    """Ray pods are owned by a RayCluster, which has no scale subresource: Kubernetes' disruption
    controller cannot count its expected pods, so a maxUnavailable (or percentage) budget allows
    zero disruptions and every drain hangs (kuberay#2662). Only an integer minAvailable counts
    the healthy pods themselves: it must leave room for one eviction per group."""
    for values, objs in rendered.items():
        groups = {g["groupName"]: g for g in
                  rayservice(objs)["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        pdbs = only(objs, "PodDisruptionBudget")
        assert pdbs, values
        for pdb in pdbs:
            spec = pdb["spec"]
            group = groups[spec["selector"]["matchLabels"]["optiserve.dev/ray-group"]]
            assert "maxUnavailable" not in spec, (values, pdb["metadata"]["name"])
            assert isinstance(spec["minAvailable"], int), (values, spec)
            # what the disruption controller allows with all replicas healthy
            allowed = group["replicas"] - spec["minAvailable"]
            assert allowed >= 1, (values, group["groupName"], spec)
            assert spec["minAvailable"] == max(group["replicas"] - 1, 0), (values, spec)


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity) -> int:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert m and m.group(2) in _UNITS, quantity
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_ray_pods_request_the_disk_their_logs_and_models_use(rendered, values):
    """Ray writes sessions and logs under /tmp (an emptyDir, with the model copy when models come
    from object storage): every Ray container requests that much ephemeral storage, so the
    scheduler places it where it fits instead of the kubelet evicting it later, and Ray's log
    rotation is bounded well below its defaults (512 MiB x 6 per log file)."""
    from ray._common.ray_constants import LOGGING_ROTATE_BACKUP_COUNT, LOGGING_ROTATE_BYTES

    for group, t in pod_templates(rayservice(rendered[values])).items():
        spec = t["spec"]
        disk = sum(_bytes(v["emptyDir"]["sizeLimit"]) for v in spec["volumes"]
                   if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
        assert disk >= 4 * 2**30, (values, group)
        c = spec["containers"][0]
        requested = c["resources"]["requests"].get("ephemeral-storage")
        assert requested and _bytes(requested) >= disk, (values, group, requested, disk)
        env = {e["name"]: e.get("value") for e in c["env"]}
        max_bytes = int(env["RAY_ROTATION_MAX_BYTES"])
        backups = int(env["RAY_ROTATION_BACKUP_COUNT"])
        assert max_bytes * (backups + 1) <= LOGGING_ROTATE_BYTES * \
            (LOGGING_ROTATE_BACKUP_COUNT + 1) / 16, (values, group)


def _dockerfile_env(path) -> dict[str, str]:
    """ENV of a Dockerfile's last stage (KEY=VALUE pairs, line continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    stage = text.split("\nFROM ")[-1]
    env = {}
    for line in stage.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                k, _, v = pair.partition("=")
                env[k] = v
    return env


def test_gpus_are_visible_only_where_one_is_requested(rendered):
    """The GPU image must not make every GPU visible: where nvidia is the container runtime's
    default, NVIDIA_VISIBLE_DEVICES=all in an image shows all the node's GPUs to any container
    started from it, GPU requested or not. With "void" a container sees none unless the device
    plugin, for a container that requests nvidia.com/gpu, sets the devices it allocated."""
    from .conftest import ROOT

    env = _dockerfile_env(ROOT / "docker/Dockerfile.gpu")
    assert env.get("NVIDIA_VISIBLE_DEVICES") == "void", env.get("NVIDIA_VISIBLE_DEVICES")
    # every container the chart runs from the GPU image requests GPUs
    for values, objs in rendered.items():
        for where, c in _containers(objs).items():
            if c["image"].endswith("-gpu"):
                assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, (values, where)
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert "NVIDIA_VISIBLE_DEVICES" not in env, (values, where)
