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
