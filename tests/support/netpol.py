"""A stand-in for a network plugin's NetworkPolicy enforcement (no cluster or CNI runs here).

It implements the rules of the networking.k8s.io/v1 API reference, which every conforming plugin
enforces: a pod is isolated for a direction once any policy of its namespace selects it with that
policy type; isolated, a connection is allowed when some selecting policy has a rule whose peers
and ports match it (no ``from``/``to``: any peer; no ``ports``: any port). Peers: ``podSelector``
alone selects pods of the policy's namespace, ``namespaceSelector`` alone every pod of the
selected namespaces, both together pods matching both, ``ipBlock`` addresses in the CIDR outside
its ``except``. The tests in tests/deploy/ use it on the chart's rendered policies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """A pod (``labels`` not None) in a namespace, or a non-pod address (``labels`` None)."""

    namespace: str = ""
    labels: dict | None = None
    ip: str = "10.1.2.3"
    namespace_labels: dict = field(default_factory=dict)
    #: container port names -> numbers, for policies naming ports
    ports: dict = field(default_factory=dict)

    def ns_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def pod(namespace: str, labels: dict, ip: str = "10.1.2.3", ports: dict | None = None,
        **namespace_labels) -> Endpoint:
    return Endpoint(namespace, dict(labels), ip, dict(namespace_labels), dict(ports or {}))


def address(ip: str) -> Endpoint:
    return Endpoint(ip=ip)


def selects(selector: dict | None, labels: dict) -> bool:
    """metav1.LabelSelector semantics: an empty selector matches everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if other.labels is None:  # pod and namespace selectors select pods only
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.ns_labels()):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(ports: list | None, port: int, protocol: str, target: Endpoint) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            want = target.ports.get(want)
        end = p.get("endPort", want)
        if want is not None and want <= port <= end:
            return True
    return False


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int,
            protocol: str = "TCP") -> bool:
    """Whether ``src`` may open a connection to ``dst``:``port``: the destination's ingress
    policies and the source's egress policies must both allow it. Every policy names its
    namespace (metadata.namespace)."""
    def direction(owner: Endpoint, other: Endpoint, kind: str, key: str, peers: str,
                  port_owner: Endpoint) -> bool:
        if owner.labels is None:
            return True  # not a pod: no policy applies to it
        selecting = [p for p in policies
                     if p["metadata"]["namespace"] == owner.namespace
                     and selects(p["spec"].get("podSelector", {}), owner.labels)
                     and kind in p["spec"].get("policyTypes", ["Ingress"])]
        if not selecting:
            return True
        for p in selecting:
            ns = p["metadata"]["namespace"]
            for rule in p["spec"].get(key) or []:
                if peers in rule and not any(_peer_matches(peer, ns, other)
                                             for peer in rule[peers]):
                    continue
                if _port_matches(rule.get("ports"), port, protocol, port_owner):
                    return True
        return False

    return (direction(dst, src, "Ingress", "ingress", "from", dst)
            and direction(src, dst, "Egress", "egress", "to", dst))
