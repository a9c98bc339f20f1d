"""The chart's NetworkPolicies, evaluated on the connections a cluster makes: the KubeRay operator
pushing the serve config, `helm test`, clients of the inference port, and what the pods may reach
(egress). No network plugin runs here: tests/support/netpol.py stands in for one and implements
the NetworkPolicy API's rules; the objects are the real helm binary's output."""

from __future__ import annotations

import copy

import pytest

from tests.support import netpol

from .conftest import CHART, CI_VALUES, helm_template, only, pod_templates, rayservice, run

NS = "serving"
#: the kuberay-operator chart's pods (app.kubernetes.io/name: its chart name), installed as its
#: README says: `helm install kuberay-operator kuberay/kuberay-operator` into namespace default
OPERATOR = netpol.pod("default", {"app.kubernetes.io/name": "kuberay-operator",
                                  "app.kubernetes.io/instance": "kuberay-operator"})


def policies(objs: list[dict]) -> list[dict]:
    out = copy.deepcopy(only(objs, "NetworkPolicy"))
    for p in out:
        p["metadata"]["namespace"] = NS
    return out


def ray_pod(objs: list[dict], group: str) -> netpol.Endpoint:
    t = pod_templates(rayservice(objs))[group]
    ports = {p["name"]: p["containerPort"] for p in t["spec"]["containers"][0]["ports"]}
    return netpol.pod(NS, t["metadata"]["labels"], ports=ports)


def test_the_operator_reaches_the_dashboard_where_its_chart_installs_it(rendered):
    """Default values: the operator installed as the kuberay-operator chart's README does (into
    namespace default) reaches the head's dashboard, where it pushes the serve config."""
    for values, objs in rendered.items():
        pols = policies(objs)
        head = ray_pod(objs, "head")
        assert netpol.allowed(pols, OPERATOR, head, 8265), values
        # nobody else in that namespace
        other = netpol.pod("default", {"app": "something-else"})
        assert not netpol.allowed(pols, other, head, 8265), values


def test_the_operators_namespace_is_a_value(helm):
    objs = helm_template(helm, "--set", "networkPolicy.kuberayOperator.namespace=ray-system")
    moved = netpol.pod("ray-system", OPERATOR.labels)
    assert netpol.allowed(policies(objs), moved, ray_pod(objs, "head"), 8265)
    assert not netpol.allowed(policies(objs), OPERATOR, ray_pod(objs, "head"), 8265)


def test_with_the_kubernetes_proxy_the_api_server_reaches_the_dashboard(helm):
    """KubeRay's useKubernetesProxy: the operator calls the dashboard through the API server's
    service proxy, so the connection comes from the API server's address, not from a pod."""
    objs = helm_template(helm, "--set", "networkPolicy.kuberayOperator.useKubernetesProxy=true",
                         "--set", "networkPolicy.kuberayOperator.apiServerCIDRs={172.20.0.0/28}")
    head = ray_pod(objs, "head")
    assert netpol.allowed(policies(objs), netpol.address("172.20.0.5"), head, 8265)
    assert not netpol.allowed(policies(objs), netpol.address("172.20.1.5"), head, 8265)
    r = run([helm, "template", "osv", str(CHART),
             "--set", "networkPolicy.kuberayOperator.useKubernetesProxy=true"])
    assert r.returncode != 0 and "networkPolicy.kuberayOperator.apiServerCIDRs" in r.stderr


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_helm_test_reaches_the_inference_port(rendered, values):
    """`helm test`'s pod (in the release's namespace) is admitted to the inference port with
    every values file, production's (inference only from the ingress namespace) included."""
    objs = rendered[values]
    (test_pod,) = only(objs, "Pod")
    src = netpol.pod(NS, test_pod["metadata"]["labels"])
    assert netpol.allowed(policies(objs), src, ray_pod(objs, "cpu"), 8000)


def test_inference_is_admitted_from_configured_namespaces_only(rendered):
    default, production = rendered["default"], rendered["production"]
    worker = ray_pod(default, "cpu")
    stranger = netpol.pod("elsewhere", {"app": "client"})
    neighbour = netpol.pod(NS, {"app": "client"})
    # default: the release's own namespace only
    assert not netpol.allowed(policies(default), stranger, worker, 8000)
    assert netpol.allowed(policies(default), neighbour, worker, 8000)
    # production: the ingress controller's namespace
    nginx = netpol.pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    assert netpol.allowed(policies(production), nginx, ray_pod(production, "cpu"), 8000)
    assert not netpol.allowed(policies(production), stranger, ray_pod(production, "cpu"), 8000)


# ---- egress ------------------------------------------------------------------------------------

DNS = netpol.pod("kube-system", {"k8s-app": "kube-dns"})
METADATA = [netpol.address("169.254.169.254"), netpol.address("fd00:ec2::254")]


def _controller(objs):
    (dep,) = only(objs, "Deployment")
    return netpol.pod(NS, dep["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_no_pod_reaches_the_cloud_metadata_endpoint(rendered, values):
    objs = rendered[values]
    pols = policies(objs)
    pods = [ray_pod(objs, g) for g in pod_templates(rayservice(objs))] + [_controller(objs)]
    for src in pods:
        for dst in METADATA:
            for port in (80, 443):
                assert not netpol.allowed(pols, src, dst, port), (values, src.labels, dst.ip)
        # name resolution works everywhere
        assert netpol.allowed(pols, src, DNS, 53, "UDP") and netpol.allowed(pols, src, DNS, 53)


def test_ray_pods_reach_each_other_and_nothing_else_by_default(rendered):
    objs = rendered["default"]
    pols = policies(objs)
    head, worker = ray_pod(objs, "head"), ray_pod(objs, "cpu")
    for port in (6379, 8265, 10001, 52365, 12345):
        assert netpol.allowed(pols, worker, head, port)
    assert not netpol.allowed(pols, worker, netpol.address("1.2.3.4"), 443)
    assert not netpol.allowed(pols, worker, netpol.pod("other", {"app": "db"}), 5432)
    # no autoscaler: the head does not need the API server
    assert not netpol.allowed(pols, head, netpol.address("10.96.0.1"), 443)


def test_the_controller_reaches_the_api_server_and_prometheus_only(rendered):
    objs = rendered["default"]
    pols = policies(objs)
    ctl = _controller(objs)
    assert netpol.allowed(pols, ctl, netpol.address("10.96.0.1"), 443)
    assert netpol.allowed(pols, ctl, netpol.address("172.18.0.2"), 6443)
    prom = netpol.pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert netpol.allowed(pols, ctl, prom, 9090)
    assert not netpol.allowed(pols, ctl, netpol.address("8.8.8.8"), 80)
    assert not netpol.allowed(pols, ctl, ray_pod(objs, "head"), 8265)  # never calls Ray


def test_model_storage_and_redis_where_the_values_use_them(rendered, helm):
    canary = rendered["canary"]  # models copied from object storage
    worker = ray_pod(canary, "cpu")
    assert netpol.allowed(policies(canary), worker, netpol.address("52.216.1.2"), 443)
    production = rendered["production"]  # GCS fault tolerance in an external Redis
    pols = policies(production)
    assert netpol.allowed(pols, ray_pod(production, "head"), netpol.address("10.4.0.7"), 6379)
    assert not netpol.allowed(pols, ray_pod(production, "head"), netpol.address("10.4.0.7"), 22)
    assert not netpol.allowed(policies(rendered["default"]), ray_pod(rendered["default"], "cpu"),
                              netpol.address("52.216.1.2"), 443)
    objs = helm_template(helm, "--set", "ray.autoscaler.enabled=true")
    assert netpol.allowed(policies(objs), ray_pod(objs, "head"), netpol.address("10.96.0.1"), 443)
