#!/usr/bin/env python3
"""Write helm/optiserve/values.schema.json (Helm checks values against it on install/template).

The batching and runtime parts are taken from the serving code's own models
(serving.config.BatchingConfig and VersionConfig), so the chart cannot accept a field the
serve config would reject. ``--check`` exits 1 when the committed file is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "helm/optiserve/values.schema.json"


def _pydantic(model) -> dict:
    schema = model.model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.pop("title", None)
    return schema


def obj(props: dict, required: tuple[str, ...] = (), extra=False, **kw) -> dict:
    out = {"type": "object", "properties": props, "additionalProperties": extra, **kw}
    if required:
        out["required"] = list(required)
    return out


S = {"type": "string"}
B = {"type": "boolean"}
INT0 = {"type": "integer", "minimum": 0}
INT1 = {"type": "integer", "minimum": 1}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
ANY_OBJ = {"type": "object"}
LIST = {"type": "array"}
QUANTITY = {"type": ["string", "number"], "pattern": r"^[0-9.]+([EPTGMK]i?|[mkMGTPE])?$"}
#: a disk size the chart sums (ephemeral-storage requests): whole Ki/Mi/Gi/Ti
DISK = {"type": "string", "pattern": r"^[0-9]+(Ki|Mi|Gi|Ti)$"}
DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
RESOURCES = obj({"requests": ANY_OBJ, "limits": ANY_OBJ})
IMAGE = obj({"repository": {"type": "string", "minLength": 1}, "tag": S,
             "digest": {"type": "string", "pattern": r"^(sha256:[a-f0-9]{64})?$"},
             "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}, ("repository",))
#: the GPU, init and controller images: an empty repository takes image.repository's
DERIVED_IMAGE = obj({**IMAGE["properties"], "repository": S})


GROUP_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 20}
#: what every Ray pod group (head and workers) passes through to its pod template
POD_PASSTHROUGH = {"nodeSelector": STR_MAP, "tolerations": LIST, "affinity": ANY_OBJ,
                   "topologySpreadConstraints": LIST, "env": LIST, "envFrom": LIST,
                   "volumes": LIST, "volumeMounts": LIST, "podAnnotations": STR_MAP,
                   "podLabels": STR_MAP, "serviceAccountName": S, "runtimeClassName": S,
                   "priorityClassName": S}


def ray_group(gpu: bool = False, named: bool = False) -> dict:
    props = {"enabled": B, "replicas": INT0, "minReplicas": INT0, "maxReplicas": INT0,
             "rayStartParams": {"type": "object"}, "resources": RESOURCES,
             "shmSize": QUANTITY, "tmpSize": DISK, **POD_PASSTHROUGH}
    if gpu:
        props["gpus"] = INT1
    if named:
        del props["enabled"]
        props["gpus"] = INT0
        props["name"] = {**GROUP_NAME, "not": {"enum": ["cpu", "gpu", "head"]}}
        return obj(props, ("name", "replicas", "minReplicas", "maxReplicas"))
    return obj(props)


def secret_key() -> dict:
    return obj({"secretName": S, "key": {"type": "string", "minLength": 1}})


def settings_schema() -> dict:
    """serve.settings: optiserve's settings by name (serving.settings.Settings), each with its
    type, bounds and description; the drain pair is required (the chart computes with it)."""
    from serving.settings import Settings

    props = _pydantic(Settings)["properties"]
    for p in props.values():
        p.pop("default", None)
        p.pop("group", None)
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": ["http_drain_accept_s", "http_drain_timeout_s"]}


def schema() -> dict:
    from serving.config import BatchingConfig, VersionConfig

    version = obj({
        "replicas": INT1,
        "autoscaling": {"type": "object", "description": "Ray Serve autoscaling_config"},
        "numCpus": {"type": "number", "minimum": 0},
        "numGpus": {"type": "number", "minimum": 0},
        "maxOngoingRequests": INT1,
        "batching": {"$ref": "#/definitions/batching"},
        "runtime": {"$ref": "#/definitions/runtime"},
    })
    model = obj({
        "stable": {"type": ["integer", "null"], "minimum": 1},
        "canary": {"type": ["integer", "null"], "minimum": 1},
        "canaryWeight": {"type": "number", "minimum": 0, "maximum": 100},
        "shadow": {"type": "number", "minimum": 0, "maximum": 1},
        "stickyHeader": {"type": ["string", "null"]},
        "versions": {"type": "object", "minProperties": 1,
                     "propertyNames": {"pattern": "^[1-9][0-9]*$"},
                     "additionalProperties": version},
    }, ("versions",))
    monitor = obj({"enabled": B, "interval": DURATION, "labels": STR_MAP})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "optiserve Helm chart values",
        "description": "Generated by scripts/gen_values_schema.py: do not edit, regenerate.",
        "type": "object",
        "additionalProperties": False,
        "definitions": {"batching": _pydantic(BatchingConfig),
                        "runtime": _pydantic(VersionConfig)},
        "properties": {
            "global": ANY_OBJ,
            "nameOverride": S, "fullnameOverride": S,
            "image": IMAGE, "gpuImage": DERIVED_IMAGE, "initImage": DERIVED_IMAGE,
            "controllerImage": DERIVED_IMAGE, "imagePullSecrets": LIST, "checkPrerequisites": B,
            "rayService": obj({
                "upgradeStrategy": obj({"type": {"enum": ["NewCluster", "None"]}}, ("type",)),
                "rayClusterDeletionDelaySeconds": INT0,
                "excludeHeadPodFromServeSvc": B,
            }),
            "rayVersion": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
            "modelRepository": obj({
                "path": {"type": "string", "pattern": "^/"},
                "source": {"enum": ["pvc", "objectStorage"]},
                "pvc": obj({"claimName": {"type": "string", "minLength": 1}}),
                "objectStorage": obj({"remote": S, "credentialsSecret": S,
                                      "sizeLimit": DISK, "image": IMAGE,
                                      "resources": RESOURCES}),
                "verify": B, "verifyResources": RESOURCES,
            }, ("path", "source")),
            "serve": obj({
                "port": PORT,
                "grpcPort": {"type": "integer", "minimum": 0, "maximum": 65535},
                "service": obj({
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "annotations": STR_MAP, "labels": STR_MAP,
                    "nodePort": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    "loadBalancerSourceRanges": {"type": "array", "items": S},
                    "externalTrafficPolicy": {"enum": ["", "Cluster", "Local"]},
                }),
                "gateway": obj({"replicas": {"type": ["integer", "null"], "minimum": 1},
                                "numCpus": {"type": "number", "minimum": 0},
                                "maxOngoingRequests": INT1,
                                "maxBodyBytes": {"type": ["integer", "null"], "minimum": 1}}),
                "settings": settings_schema(),
                "models": {"type": "object", "minProperties": 1,
                           "propertyNames": {"pattern": "^[a-z0-9][a-z0-9_.-]*$"},
                           "additionalProperties": model},
            }, ("models",)),
            "ray": obj({
                "metricsPort": PORT, "dashboardPort": PORT, "dashboardAgentPort": PORT,
                "dashboardMetricsPort": PORT, "autoscalerMetricsPort": PORT,
                "env": LIST, "podLabels": STR_MAP, "podAnnotations": STR_MAP,
                "priorityClassName": S,
                "auth": obj({"enabled": B, "secretName": S}),
                "gcsFaultTolerance": obj({
                    "enabled": B, "redisAddress": S, "redisPassword": secret_key(),
                    "redisUsername": secret_key(), "externalStorageNamespace": S}),
                "drain": obj({"timeoutSeconds": {"type": "integer", "minimum": 0,
                                                 "maximum": 3600}}),
                "autoscaler": obj({"enabled": B, "idleTimeoutSeconds": INT0,
                                   "resources": RESOURCES}),
                "logs": obj({"rotationMaxBytes": {"type": "integer", "minimum": 1048576},
                             "rotationBackupCount": INT0}),
            }),
            "head": obj({"rayStartParams": {"type": "object"}, "resources": RESOURCES,
                         "shmSize": QUANTITY, "tmpSize": DISK, **POD_PASSTHROUGH}),
            "workers": obj({"cpu": ray_group(), "gpu": ray_group(gpu=True),
                            "additional": {"type": "array",
                                           "items": ray_group(named=True)}}),
            "rolloutController": obj({
                "enabled": B, "prometheusUrl": {"type": "string", "pattern": "^(https?://.*)?$"},
                "admissionPolicy": obj({"enabled": B}),
                "metricsPort": PORT, "metricsBindAddress": {"type": "string", "minLength": 1},
                "stateConfigMap": S, "extraArgs": LIST, "env": LIST,
                "resources": RESOURCES, "nodeSelector": STR_MAP, "tolerations": LIST,
                "affinity": ANY_OBJ}),
            "monitoring": obj({
                "prometheusOperator": {"enum": ["auto", True, False]},
                "selectorLabels": STR_MAP,
                "prometheus": obj({"discover": B, "release": {"type": "string", "minLength": 1},
                                   "namespace": {"type": "string", "minLength": 1}}),
                "podMonitor": monitor, "serviceMonitor": monitor,
                "prometheusRule": obj({"enabled": B, "labels": STR_MAP}),
                "dashboards": obj({"enabled": B, "labels": STR_MAP, "annotations": STR_MAP,
                                   "namespace": S}),
            }),
            "alerts": obj({
                "p99ObjectiveSeconds": {"type": "number", "exclusiveMinimum": 0},
                "errorRatio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "gpuUtilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "gpuMemoryRatio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "minRequestRate": {"type": "number", "minimum": 0},
                "overloadRatio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "upgradeStuckMinutes": {"type": "integer", "minimum": 1},
            }),
            "networkPolicy": obj({"enabled": B, "servingFrom": LIST, "metricsFrom": LIST,
                                  "kuberayOperator": obj({
                                      "namespace": {"type": "string", "minLength": 1},
                                      "podLabels": {**STR_MAP, "minProperties": 1},
                                      "useKubernetesProxy": B,
                                      "apiServerCIDRs": {"type": "array", "items": S}},
                                      ("namespace", "podLabels")),
                                  "dashboardFrom": LIST,
                                  "egress": obj({"enabled": B, "dnsTo": LIST,
                                                 "apiServerTo": LIST, "prometheusTo": LIST,
                                                 "modelStorageTo": LIST, "redisTo": LIST,
                                                 "extraTo": LIST})}),
            "ingress": obj({
                "enabled": B, "className": S, "annotations": STR_MAP,
                "hosts": {"type": "array", "items": obj({
                    "host": S, "paths": {"type": "array", "items": obj({
                        "path": {"type": "string", "pattern": "^/"},
                        "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                    }, ("path",))}}, ("host", "paths"))},
                "tls": {"type": "array", "items": obj({"secretName": S, "hosts": LIST})},
                "basicAuth": obj({"secretName": S, "realm": S}),
            }),
            "httpRoute": obj({
                "enabled": B, "annotations": STR_MAP, "parentRefs": LIST, "hostnames": LIST,
                "pathPrefix": {"type": "string", "pattern": "^/"}, "filters": LIST,
            }),
            "grpcRoute": obj({
                "enabled": B, "annotations": STR_MAP, "parentRefs": LIST, "hostnames": LIST,
            }),
            "podDisruptionBudget": obj({"enabled": B,
                                        "maxUnavailable": {"type": ["integer", "string"]}}),
            "podSecurityContext": ANY_OBJ,
            "securityContext": ANY_OBJ,
            "tests": obj({"enabled": B, "model": S, "resources": RESOURCES}),
        },
    }


def render() -> str:
    return json.dumps(schema(), indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python "
                  "scripts/gen_values_schema.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
