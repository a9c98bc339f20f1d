"""The pods KubeRay makes from a RayService's pod templates, for the checks that must hold for
every pod that runs (Pod Security, hardening). KubeRay cannot run here; this adds what its pod
builder adds, read from ray-operator/controllers/ray/common/pod.go at v1.6.0 (the chart's
minimum):

- every worker pod: an init container ``wait-gcs-ready`` with the Ray container's image,
  securityContext, env and volume mounts and fixed resources (200m / 256Mi), unless the operator
  runs with ENABLE_INIT_CONTAINER_INJECTION=false;
- the head, with in-tree autoscaling: a sidecar ``autoscaler`` with the Ray container's image,
  autoscalerOptions' resources and securityContext, and a ``ray-logs`` emptyDir at /tmp/ray in
  both containers.
"""

from __future__ import annotations

import copy


def kuberay_pods(rs: dict) -> dict[str, dict]:
    """Group name -> the pod spec KubeRay creates for it."""
    cluster = rs["spec"]["rayClusterConfig"]
    out = {}
    head = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
    if cluster.get("enableInTreeAutoscaling"):
        opts = cluster.get("autoscalerOptions") or {}
        ray = head["containers"][0]
        sidecar = {"name": "autoscaler", "image": ray["image"],
                   "imagePullPolicy": "IfNotPresent",
                   "command": ["/bin/bash", "-lc", "--"],
                   "resources": copy.deepcopy(opts.get("resources") or {
                       "limits": {"cpu": "500m", "memory": "512Mi"},
                       "requests": {"cpu": "500m", "memory": "512Mi"}})}
        if "securityContext" in opts:
            sidecar["securityContext"] = copy.deepcopy(opts["securityContext"])
        head["containers"].append(sidecar)
        if not any(m["mountPath"] == "/tmp/ray" for m in ray.get("volumeMounts", [])):
            head.setdefault("volumes", []).append({"name": "ray-logs", "emptyDir": {}})
            for c in (ray, sidecar):
                c.setdefault("volumeMounts", []).append(
                    {"name": "ray-logs", "mountPath": "/tmp/ray"})
    out["head"] = head
    for g in cluster.get("workerGroupSpecs", []):
        spec = copy.deepcopy(g["template"]["spec"])
        ray = spec["containers"][0]
        spec.setdefault("initContainers", []).append({
            "name": "wait-gcs-ready", "image": ray["image"],
            "imagePullPolicy": ray.get("imagePullPolicy"),
            "command": ["/bin/bash", "-lc", "--"], "args": ["ray health-check ..."],
            "securityContext": copy.deepcopy(ray.get("securityContext")),
            "env": copy.deepcopy(ray.get("env", [])),
            "volumeMounts": copy.deepcopy(ray.get("volumeMounts", [])),
            "resources": {"limits": {"cpu": "200m", "memory": "256Mi"},
                          "requests": {"cpu": "200m", "memory": "256Mi"}}})
        out[g["groupName"]] = spec
    return out
