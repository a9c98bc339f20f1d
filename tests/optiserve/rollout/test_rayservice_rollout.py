"""A whole rollout on the RayService target, and a `helm upgrade` in the middle of it.

No Kubernetes API server, KubeRay or Prometheus can run together here, so: ``KubeRayStandIn``
stands in for the API server holding the RayService plus KubeRay reporting every application in
``serveConfigV2`` as RUNNING after a few reads; ``FakeCoreApi`` (test_rayservice_target) stands
in for the ConfigMap endpoints; ``StandInPrometheus`` (test_controller) answers the analysis
queries and reports the weights the gateway would export from the RayService's current split.
The chart is rendered by the real helm binary (``helm template``, as Argo CD or a `helm upgrade`
without lookup would), and the controller, target, store and splits are the real ones.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from serving.config import version_app_name
from optiserve.rollout import ConfigMapStateStore, Controller, RayServiceTarget
from optiserve.rollout import controller as controller_module
from optiserve.rollout.targets import traffic_of
from tests.deploy.conftest import CHART, find_tool, run

from .test_controller import Clock, StandInPrometheus
from .test_rayservice_target import ApiException, FakeCoreApi


def rendered_serve_config() -> str:
    """serveConfigV2 as the chart renders it from its default values (minilm v1 only)."""
    r = run([find_tool("helm"), "template", "osv", str(CHART), "--namespace", "ml",
             "--set", "serve.models.minilm.versions.1.replicas=1",
             "--show-only", "templates/rayservice.yaml"])
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["spec"]["serveConfigV2"]


class KubeRayStandIn:
    """Stands in for the API server (get/patch of one RayService with resourceVersion
    conflicts) and for KubeRay: an application in ``serveConfigV2`` is RUNNING in
    ``status.activeServiceStatus`` once it has been seen for ``ready_after`` reads."""

    def __init__(self, serve_config: str, prom: StandInPrometheus, ready_after: int = 3):
        self.obj = {"apiVersion": "ray.io/v1", "kind": "RayService",
                    "metadata": {"name": "osv-optiserve", "namespace": "ml",
                                 "resourceVersion": "1"},
                    "spec": {"serveConfigV2": serve_config}, "status": {}}
        self.prom, self.ready_after = prom, ready_after
        self.seen: dict[str, int] = {}
        self._report()

    def _report(self) -> None:
        t = traffic_of(yaml.safe_load(self.obj["spec"]["serveConfigV2"]), "minilm")
        self.prom.reported = {v: (t.canary_weight if v == t.canary else 100 - t.canary_weight
                                  if v == t.stable else 0.0) for v in t.versions}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        doc = yaml.safe_load(self.obj["spec"]["serveConfigV2"])
        statuses = {}
        for app in doc["applications"]:
            n = self.seen[app["name"]] = self.seen.get(app["name"], 0) + 1
            statuses[app["name"]] = {"status": "RUNNING" if n > self.ready_after
                                     else "DEPLOYING"}
        self.obj["status"] = {"activeServiceStatus": {"applicationStatuses": statuses}}
        return copy.deepcopy(self.obj)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body,
                                       **kw):
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise ApiException(409, "Conflict")
        self.helm_upgrade(body["spec"]["serveConfigV2"])

    def helm_upgrade(self, serve_config: str) -> None:
        """What any writer of the spec does (the controller's patch, a helm upgrade)."""
        self.obj["spec"]["serveConfigV2"] = serve_config
        self.obj["metadata"]["resourceVersion"] = str(
            int(self.obj["metadata"]["resourceVersion"]) + 1)
        self._report()


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(controller_module, "now", c)
    return c


def test_a_rayservice_rollout_deploys_the_canary_and_survives_a_helm_upgrade(clock):
    prom = StandInPrometheus(rate=5)
    chart = rendered_serve_config()
    api = KubeRayStandIn(chart, prom)
    target = RayServiceTarget(api, "ml", "osv-optiserve")
    core = FakeCoreApi()
    store = ConfigMapStateStore(core, "ml", "osv-optiserve-rollout-state",
                                models=lambda: ["minilm"])
    ctl = Controller(store, target, prom)
    ctl.start("minilm", 2, steps=[25, 50, 100], interval_s=10, min_requests=20,
              scrape_interval_s=1, shadow=0.5, max_p99_ratio=None, retire_after_s=5)

    def tick_until(done, seconds=200):
        for _ in range(seconds):
            st = store.load("minilm")
            if done(st):
                return st
            clock.advance(1)
            ctl.tick()
        raise AssertionError(store.load("minilm"))

    st = tick_until(lambda st: st.phase == "progressing" and st.step == 1 and st.confirmed)
    assert version_app_name("minilm", 2) in api.seen  # deployed into serveConfigV2
    assert target.read("minilm").canary_weight == 50
    # the owned split is in the model's ConfigMap, where the chart's lookup finds it
    cm = core.objects["osv-optiserve-rollout-state-minilm"]
    assert '"canary_weight":50.0' in cm.data["state.json"].replace(" ", "")
    # mid-rollout, a helm upgrade (rendered without lookup) resets the split to values
    api.helm_upgrade(chart)
    assert target.read("minilm").versions == (1,)
    st = tick_until(lambda st: st.applied and target.read("minilm").canary_weight == 50,
                    seconds=5)
    assert st.step == 1  # the same step, not restarted or skipped
    assert traffic_of(yaml.safe_load(api.obj["spec"]["serveConfigV2"]), "minilm").deployed \
        == (1, 2)
    st = tick_until(lambda st: st.settled)
    assert st.phase == "promoted"
    assert [a.weight for a in st.analyses if a.outcome == "pass"] == [25, 50, 100]
    t = target.read("minilm")
    assert (t.stable, t.versions, t.deployed) == (2, (2,), (2,))  # v1 retired
