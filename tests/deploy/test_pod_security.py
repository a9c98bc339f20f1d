"""Pod Security Standards, `restricted` profile, on every pod that runs: the chart's own (the
controller, `helm test`) and the pods KubeRay makes from the RayService (tests/deploy/
kuberay_pods.py: its init container and autoscaler sidecar included). The Pod Security admission
controller cannot run here; each test is one of its `restricted` checks as the Kubernetes
documentation states them (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
the baseline checks that restricted includes first). test_checkov.py runs checkov's matching
checks on the same templates as a second opinion."""

from __future__ import annotations

import copy

import pytest

from .conftest import CI_VALUES, helm_template, only, rayservice
from .kuberay_pods import kuberay_pods

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def all_pods(objs: list[dict]) -> dict[str, dict]:
    out = {f"ray-{g}": spec for g, spec in kuberay_pods(rayservice(objs)).items()}
    for d in only(objs, "Deployment"):
        out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
    for p in only(objs, "Pod"):
        out[p["metadata"]["name"]] = p["spec"]
    return out


def containers(spec: dict) -> list[dict]:
    return (spec.get("initContainers", []) + spec["containers"]
            + spec.get("ephemeralContainers", []))


# one function per `restricted` check; each returns the violations in a pod spec

def host_process(spec):
    ws = [spec.get("securityContext", {}).get("windowsOptions", {})] + [
        (c.get("securityContext") or {}).get("windowsOptions", {}) for c in containers(spec)]
    return [w for w in ws if w.get("hostProcess")]


def host_namespaces(spec):
    return [k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]


def privileged(spec):
    return [c["name"] for c in containers(spec) if (c.get("securityContext") or {}).get(
        "privileged")]


def host_path_volumes(spec):
    return [v["name"] for v in spec.get("volumes", []) if "hostPath" in v]


def host_ports(spec):
    return [(c["name"], p) for c in containers(spec) for p in c.get("ports", [])
            if p.get("hostPort")]


def app_armor(spec, annotations=None):
    bad = [k for k, v in (annotations or {}).items()
           if k.startswith("container.apparmor.security.beta.kubernetes.io/")
           and v not in ("runtime/default",) and not v.startswith("localhost/")]
    for sc in [spec.get("securityContext", {})] + [c.get("securityContext") or {}
                                                    for c in containers(spec)]:
        t = (sc.get("appArmorProfile") or {}).get("type")
        if t not in (None, "RuntimeDefault", "Localhost"):
            bad.append(t)
    return bad


def se_linux(spec):
    bad = []
    for sc in [spec.get("securityContext", {})] + [c.get("securityContext") or {}
                                                    for c in containers(spec)]:
        o = sc.get("seLinuxOptions") or {}
        if o.get("type") not in (None, "", "container_t", "container_init_t",
                                 "container_kvm_t", "container_engine_t"):
            bad.append(o)
        if o.get("user") or o.get("role"):
            bad.append(o)
    return bad


def proc_mount(spec):
    return [c["name"] for c in containers(spec)
            if (c.get("securityContext") or {}).get("procMount", "Default") != "Default"]


def sysctls(spec):
    return [s["name"] for s in spec.get("securityContext", {}).get("sysctls", [])
            if s["name"] not in SAFE_SYSCTLS]


def volume_types(spec):
    bad = []
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append((v["name"], sorted(kinds)))
    return bad


def privilege_escalation(spec):
    return [c["name"] for c in containers(spec)
            if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]


def run_as_non_root(spec):
    pod = spec.get("securityContext", {}).get("runAsNonRoot")
    bad = []
    for c in containers(spec):
        own = (c.get("securityContext") or {}).get("runAsNonRoot")
        if own is False or (own is None and pod is not True):
            bad.append(c["name"])
    return bad


def run_as_user(spec):
    users = [spec.get("securityContext", {}).get("runAsUser")] + [
        (c.get("securityContext") or {}).get("runAsUser") for c in containers(spec)]
    return [u for u in users if u == 0]


def seccomp(spec):
    pod = (spec.get("securityContext", {}).get("seccompProfile") or {}).get("type")
    bad = []
    if pod not in (None, "RuntimeDefault", "Localhost"):
        bad.append(("pod", pod))
    for c in containers(spec):
        own = ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if own is None and pod is None:
            bad.append((c["name"], None))
        elif own not in (None, "RuntimeDefault", "Localhost"):
            bad.append((c["name"], own))
    return bad


def capabilities(spec):
    bad = []
    for c in containers(spec):
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append((c["name"], "drop"))
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append((c["name"], caps["add"]))
    return bad


RULES = {f.__name__: f for f in (
    host_process, host_namespaces, privileged, host_path_volumes, host_ports, app_armor,
    se_linux, proc_mount, sysctls, volume_types, privilege_escalation, run_as_non_root,
    run_as_user, seccomp, capabilities)}
VARIANTS = {**{v: ("-f", str(p)) for v, p in CI_VALUES.items()},
            "autoscaler": ("--set", "ray.autoscaler.enabled=true")}


@pytest.fixture(scope="module")
def pods(helm) -> dict[str, dict[str, dict]]:
    return {v: all_pods(helm_template(helm, *args)) for v, args in VARIANTS.items()}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_restricted(pods, rule):
    for values, specs in pods.items():
        assert "ray-head" in specs and len(specs) >= 4, values
        for name, spec in specs.items():
            assert RULES[rule](spec) == [], (rule, values, name)


def test_kube_rays_own_containers_are_checked(pods):
    assert "wait-gcs-ready" in {c["name"] for c in pods["default"]["ray-cpu"]["initContainers"]}
    assert "autoscaler" in {c["name"] for c in pods["autoscaler"]["ray-head"]["containers"]}


@pytest.mark.parametrize("rule, breach", [
    ("host_namespaces", lambda s: s.update(hostNetwork=True)),
    ("privileged", lambda s: s["containers"][0]["securityContext"].update(privileged=True)),
    ("host_path_volumes", lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    ("host_ports", lambda s: s["containers"][0]["ports"][0].update(hostPort=8000)),
    ("volume_types", lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x"}})),
    ("privilege_escalation",
     lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")),
    ("run_as_non_root", lambda s: (s["securityContext"].pop("runAsNonRoot"),
                                   s["containers"][0]["securityContext"].pop("runAsNonRoot"))),
    ("run_as_user", lambda s: s["containers"][0]["securityContext"].update(runAsUser=0)),
    ("seccomp", lambda s: s["containers"][0]["securityContext"].update(
        seccompProfile={"type": "Unconfined"})),
    ("capabilities", lambda s: s["containers"][0]["securityContext"]["capabilities"].update(
        add=["SYS_ADMIN"])),
    ("sysctls", lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax",
                                                                "value": "1"}])),
    ("proc_mount", lambda s: s["containers"][0]["securityContext"].update(procMount="Unmasked")),
    ("se_linux", lambda s: s["securityContext"].update(seLinuxOptions={"type": "spc_t"})),
    ("app_armor", lambda s: s["securityContext"].update(appArmorProfile={"type": "Unconfined"})),
    ("host_process", lambda s: s["securityContext"].update(windowsOptions={"hostProcess": True})),
])
def test_each_check_can_fail(pods, rule, breach):
    spec = copy.deepcopy(pods["default"]["ray-cpu"])
    breach(spec)
    assert RULES[rule](spec), rule
