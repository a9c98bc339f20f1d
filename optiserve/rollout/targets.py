"""Where a rollout's splits are applied: a local Ray Serve (REST API) or a KubeRay RayService.

A split (:class:`~optiserve.rollout.state.Split`) says which versions of a model have an
application and which the gateway routes to, with what weights. Both targets edit the same
declarative serve config: weights are the gateway deployment's ``user_config`` (applied in place,
``reconfigure``, no replica restarts); adding or removing a version adds or removes its
``<model>-v<N>`` application, a copy of the stable version's (same replicas and threads), and
leaves every other application untouched.

A canary shares its stable's CPUs while both run. The sizing rule fills a machine (on 2 CPUs:
gateway 0.25 + model 1.75), so a copy asking for the stable's 1.75 CPUs more could not be
scheduled anywhere (measured: the rollout waited out its deploy timeout). The copy reserves no
CPU and keeps the stable's threads and lanes (the stable's CPUs in ``user_config.cpus``); it
asks for the ``optiserve_model`` resource instead, which every node that runs models offers, so
it lands beside models and never on a head with no CPUs.
When the canary outlives the stable it borrowed from (promotion), the same apply gives it the
stable's full reservation back; it is started with a surge (``max_surge_percent`` 100), so the
borrowing replica serves until its replacement is up.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Protocol

import yaml

from serving.config import (
    MODEL_RESOURCE, VERSION_IMPORT, ConfigError, GatewayConfig, gateway_user_config,
    validate_serve_config, version_app_name,
)
from ..serve_api import ServeAPI, ServeAPIError
from .state import OwnedSplit, Split

#: Batching settings a new version does not copy from stable: the optimizer recommends them
#: per version (its manifest), so an unset value takes the new version's own recommendation.
PER_VERSION_BATCHING = ("max_batch_size", "max_delay_ms")


class TargetError(RuntimeError):
    """The target could not be read or changed; nothing was applied."""


@dataclass(frozen=True)
class Traffic:
    stable: int
    canary: int | None
    canary_weight: float
    shadow: float
    #: versions the gateway routes to
    versions: tuple[int, ...]
    #: versions with an application (a superset of ``versions`` while one is being deployed
    #: or retired)
    deployed: tuple[int, ...] = ()

    def split(self) -> Split:
        return Split(stable=self.stable, canary=self.canary,
                     weight=self.canary_weight if self.canary else 0.0,
                     shadow=self.shadow if self.canary else 0.0,
                     routed=self.versions, deployed=self.deployed or self.versions)


class Target(Protocol):
    def read(self, model: str) -> Traffic: ...
    def config(self) -> dict: ...
    def apply(self, model: str, split: Split) -> None: ...
    def app_status(self, model: str, version: int) -> tuple[str, str]: ...


def _version_apps(doc: dict, model: str) -> dict[int, dict]:
    out = {}
    for app in doc.get("applications", []):
        args = app.get("args") or {}
        if app.get("import_path") == VERSION_IMPORT and args.get("model") == model:
            out[int(args["version"])] = app
    return out


def traffic_of(doc: dict, model: str) -> Traffic:
    models = gateway_user_config(doc).get("models") or {}
    if model not in models:
        raise TargetError(f"model {model!r} is not served (served: "
                          f"{', '.join(sorted(models)) or 'none'})")
    r = models[model]
    canary = r.get("canary")
    return Traffic(stable=int(r["stable"]), canary=int(canary) if canary else None,
                   canary_weight=float(r.get("canary_weight", 0.0)),
                   shadow=float(r.get("shadow", 0.0)),
                   versions=tuple(sorted(int(v) for v in r["versions"])),
                   deployed=tuple(sorted(_version_apps(doc, model))))


def _clone_app(template: dict, model: str, version: int, borrow: bool = False) -> dict:
    """A copy of ``template`` (another version's application) serving ``version``; with
    ``borrow``, sharing the template's CPUs (see the module's docstring)."""
    app = copy.deepcopy(template)
    old = app["name"]
    app["name"] = version_app_name(model, version)
    app["args"] = {**app.get("args", {}), "version": version}
    for dep in app.get("deployments") or []:
        if dep.get("name") == old:
            dep["name"] = app["name"]
        # a replacement starts before the replica it replaces stops (no gap in serving)
        dep["max_surge_percent"] = 100
        if borrow:
            _borrow_cpus(dep)
    return app


def _borrow_cpus(dep: dict) -> None:
    actor = dep.setdefault("ray_actor_options", {})
    cpus = float(actor.get("num_cpus", 1))
    if actor.get("num_gpus") or cpus == 0:
        return  # a GPU is not shared this way; nothing to borrow
    uc = dep.setdefault("user_config", {})
    # the threads and lanes the template runs with: the replica derives them from its CPUs
    uc.setdefault("cpus", max(1, math.ceil(cpus - 1e-9)))
    actor["num_cpus"] = 0
    actor["resources"] = {**(actor.get("resources") or {}), MODEL_RESOURCE: 1}


def borrows_cpus(app: dict) -> bool:
    """Whether a version application shares another's CPUs (a canary's copy)."""
    deps = app.get("deployments") or []
    return bool(deps) and all(
        float((d.get("ray_actor_options") or {}).get("num_cpus", 1)) == 0
        and MODEL_RESOURCE in ((d.get("ray_actor_options") or {}).get("resources") or {})
        for d in deps)


def with_split(doc: dict, model: str, split: Split) -> dict:
    """A copy of the serve config serving ``model`` as ``split`` says, validated before use."""
    if not set(split.routed) <= set(split.deployed):
        raise TargetError(f"versions {sorted(set(split.routed) - set(split.deployed))} of "
                          f"{model} would be routed with no application")
    if split.stable not in split.routed or (split.canary and split.canary not in split.routed):
        raise TargetError(f"stable and canary of {model} must be routed versions")
    new = copy.deepcopy(doc)
    uc = gateway_user_config(new)
    route = (uc.get("models") or {}).get(model)
    if route is None:
        raise TargetError(f"model {model!r} is not served")
    apps = _version_apps(new, model)
    if not apps:
        raise TargetError(f"model {model!r} has no version application to copy")
    template = apps.get(split.stable) or apps[min(apps)]
    lenders = {v: a for v, a in apps.items() if not borrows_cpus(a)}
    lender = lenders.get(int(route.get("stable", -1))) or lenders.get(split.stable) \
        or next(iter(lenders.values()), template)
    kept = [a for a in new["applications"]
            if not (a.get("import_path") == VERSION_IMPORT
                    and (a.get("args") or {}).get("model") == model
                    and int(a["args"]["version"]) not in split.deployed)]
    kept += [_clone_app(lender, model, v, borrow=True) for v in split.deployed if v not in apps]
    if not any(v in lenders for v in split.deployed) and not borrows_cpus(lender):
        # the versions left all borrowed from one that is going: they get its share back
        kept = [_clone_app(lender, model, int(a["args"]["version"]))
                if a.get("import_path") == VERSION_IMPORT
                and (a.get("args") or {}).get("model") == model and borrows_cpus(a) else a
                for a in kept]
    new["applications"] = kept
    versions = {int(k): v for k, v in (route.get("versions") or {}).items()}
    base = versions.get(split.stable) or next(iter(versions.values()), {}) or {}
    batching = {k: v for k, v in base.items() if k not in PER_VERSION_BATCHING}
    route["versions"] = {v: versions.get(v, dict(batching)) for v in sorted(split.routed)}
    route.update(stable=split.stable, canary=split.canary,
                 canary_weight=split.weight if split.canary else 0.0,
                 shadow=split.shadow if split.canary else 0.0)
    try:
        GatewayConfig.model_validate(uc)
        validate_serve_config(new, repository_check=False)
    except (ValueError, ConfigError) as e:
        raise TargetError(f"refusing to apply an invalid split for {model}: {e}") from None
    return new


def owned_split(doc: dict, model: str) -> OwnedSplit:
    """The model's route and version applications in a serve config, as the state records them
    (what the chart keeps on ``helm upgrade``)."""
    route = copy.deepcopy((gateway_user_config(doc).get("models") or {})[model])
    route["versions"] = {str(k): v for k, v in (route.get("versions") or {}).items()}
    return OwnedSplit(route=route, applications=[
        copy.deepcopy(a) for _, a in sorted(_version_apps(doc, model).items())])


class LocalServeTarget:
    """A Ray Serve cluster through its declarative REST API (``optiserve serve`` locally)."""

    def __init__(self, api: ServeAPI, confirm_timeout_s: float = 30.0):
        self.api = api
        self.confirm_timeout_s = confirm_timeout_s

    def config(self) -> dict:
        try:
            return self.api.deployed_config()
        except ServeAPIError as e:
            raise TargetError(str(e)) from None

    def read(self, model: str) -> Traffic:
        return traffic_of(self.config(), model)

    def apply(self, model: str, split: Split) -> None:
        new = with_split(self.config(), model, split)
        try:
            self.api.apply(new)
        except ServeAPIError as e:
            raise TargetError(f"Serve API refused the new split: {e}") from None
        want = traffic_of(new, model)
        deadline = time.monotonic() + self.confirm_timeout_s
        while time.monotonic() < deadline:  # Serve takes it asynchronously; wait to see it
            try:
                if traffic_of(self.config(), model) == want:
                    return
            except TargetError:
                pass
            time.sleep(0.2)
        raise TargetError(f"Serve did not report the new split for {model} within "
                          f"{self.confirm_timeout_s:.0f} s")

    def app_status(self, model: str, version: int) -> tuple[str, str]:
        try:
            apps = self.api.details().get("applications") or {}
        except ServeAPIError as e:
            raise TargetError(str(e)) from None
        app = apps.get(version_app_name(model, version)) or {}
        return app.get("status", "NOT_STARTED"), _message(app, app.get("deployments"))


RAYSERVICE = {"group": "ray.io", "version": "v1", "plural": "rayservices"}
#: the controller's own field manager: after a rollout it owns spec.serveConfigV2 and nothing
#: else of the RayService (Helm's fields stay Helm's)
FIELD_MANAGER = "optiserve-rollout-controller"


def rayservice_patch(obj: dict, model: str, split: Split) -> dict:
    """The server-side apply configuration that sets a split in a RayService's
    ``spec.serveConfigV2``: that field alone, so the controller's field manager owns nothing
    else.

    It carries the object's ``resourceVersion``, so the API server refuses it (409) if the
    RayService changed since it was read."""
    raw = (obj.get("spec") or {}).get("serveConfigV2")
    if not raw:
        raise TargetError("the RayService has no spec.serveConfigV2")
    new = with_split(yaml.safe_load(raw), model, split)
    return {"apiVersion": obj.get("apiVersion", "ray.io/v1"), "kind": "RayService",
            "metadata": {"name": obj["metadata"]["name"],
                         "resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": {"serveConfigV2": yaml.safe_dump(new, sort_keys=False)}}


class RayServiceTarget:
    """A KubeRay RayService; needs only get and patch on its own RayService."""

    def __init__(self, custom_api, namespace: str, name: str, retries: int = 5):
        self.api, self.namespace, self.name, self.retries = custom_api, namespace, name, retries

    def _get(self) -> dict:
        try:
            return self.api.get_namespaced_custom_object(
                RAYSERVICE["group"], RAYSERVICE["version"], self.namespace,
                RAYSERVICE["plural"], self.name)
        except Exception as e:
            raise TargetError(f"cannot read RayService {self.namespace}/{self.name}: "
                              f"{getattr(e, 'reason', e)}") from None

    def config(self) -> dict:
        return yaml.safe_load((self._get().get("spec") or {}).get("serveConfigV2") or "") or {}

    def read(self, model: str) -> Traffic:
        return traffic_of(self.config(), model)

    def apply(self, model: str, split: Split) -> None:
        for _ in range(self.retries):
            patch = rayservice_patch(self._get(), model, split)
            try:
                # server-side apply under the controller's own field manager, forced: it takes
                # spec.serveConfigV2 (Helm applied it first) and only that field
                self.api.patch_namespaced_custom_object(
                    RAYSERVICE["group"], RAYSERVICE["version"], self.namespace,
                    RAYSERVICE["plural"], self.name, patch, field_manager=FIELD_MANAGER,
                    force=True, _content_type="application/apply-patch+yaml")
                return
            except Exception as e:
                if getattr(e, "status", None) == 409:  # changed since read: read again
                    continue
                raise TargetError(f"cannot patch RayService {self.namespace}/{self.name}: "
                                  f"{getattr(e, 'reason', e)}") from None
        raise TargetError(f"RayService {self.namespace}/{self.name} kept changing; gave up "
                          f"after {self.retries} conflicts")

    def app_status(self, model: str, version: int) -> tuple[str, str]:
        """The application's status as KubeRay reports it from the serving cluster
        (``status.activeServiceStatus.applicationStatuses``)."""
        status = (self._get().get("status") or {}).get("activeServiceStatus") or {}
        app = (status.get("applicationStatuses") or {}).get(version_app_name(model, version))
        if not app:
            return "NOT_STARTED", ""
        return app.get("status", "NOT_STARTED"), _message(app, app.get("serveDeploymentStatuses"))


def _message(app: dict, deployments: dict | None) -> str:
    """An application's status message, with its deployments' (Serve says why a replica is not
    scheduled, or is slow to start, on the deployment, not the application)."""
    parts = [(app.get("message") or "").strip()]
    parts += [(d.get("message") or "").strip() for d in (deployments or {}).values()]
    return "\n".join(p for p in parts if p)
