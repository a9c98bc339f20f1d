"""Where traffic weights are applied: a local Ray Serve (REST API) or a KubeRay RayService.

Both edit only the gateway deployment's ``user_config`` inside the declarative serve config, the
change Serve applies in place (``reconfigure``), so no replica restarts.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Protocol

import yaml

from ..config import GatewayConfig, gateway_user_config
from ..serve_api import ServeAPI, ServeAPIError


class TargetError(RuntimeError):
    """The target could not be read or changed; nothing was applied."""


@dataclass(frozen=True)
class Traffic:
    stable: int
    canary: int | None
    canary_weight: float
    shadow: float
    versions: tuple[int, ...]


class Target(Protocol):
    def read(self, model: str) -> Traffic: ...
    def apply(self, model: str, stable: int, canary: int | None, weight: float,
              shadow: float) -> None: ...


def traffic_of(doc: dict, model: str) -> Traffic:
    models = gateway_user_config(doc).get("models") or {}
    if model not in models:
        raise TargetError(f"model {model!r} is not served (served: "
                          f"{', '.join(sorted(models)) or 'none'})")
    r = models[model]
    return Traffic(stable=int(r["stable"]), canary=r.get("canary"),
                   canary_weight=float(r.get("canary_weight", 0.0)),
                   shadow=float(r.get("shadow", 0.0)),
                   versions=tuple(sorted(int(v) for v in r["versions"])))


def with_traffic(doc: dict, model: str, stable: int, canary: int | None, weight: float,
                 shadow: float) -> dict:
    """A copy of the serve config with new weights for ``model``, validated before use."""
    new = copy.deepcopy(doc)
    uc = gateway_user_config(new)
    route = uc.get("models", {}).get(model)
    if route is None:
        raise TargetError(f"model {model!r} is not served")
    route.update(stable=stable, canary=canary, canary_weight=weight if canary else 0.0,
                 shadow=shadow if canary else 0.0)
    try:
        GatewayConfig.model_validate(uc)
    except ValueError as e:
        raise TargetError(f"refusing to apply an invalid traffic split for {model}: {e}") from None
    return new


class LocalServeTarget:
    """A Ray Serve cluster through its declarative REST API (``optiserve serve`` locally)."""

    def __init__(self, api: ServeAPI, confirm_timeout_s: float = 30.0):
        self.api = api
        self.confirm_timeout_s = confirm_timeout_s

    def _config(self) -> dict:
        try:
            return self.api.deployed_config()
        except ServeAPIError as e:
            raise TargetError(str(e)) from None

    def read(self, model: str) -> Traffic:
        return traffic_of(self._config(), model)

    def apply(self, model, stable, canary, weight, shadow) -> None:
        new = with_traffic(self._config(), model, stable, canary, weight, shadow)
        try:
            self.api.apply(new)
        except ServeAPIError as e:
            raise TargetError(f"Serve API refused the new weights: {e}") from None
        want = traffic_of(new, model)
        deadline = time.monotonic() + self.confirm_timeout_s
        while time.monotonic() < deadline:  # Serve applies it asynchronously; wait to see it
            try:
                if traffic_of(self._config(), model) == want:
                    return
            except TargetError:
                pass
            time.sleep(0.2)
        raise TargetError(f"Serve did not report the new weights for {model} within "
                          f"{self.confirm_timeout_s:.0f} s")


RAYSERVICE = {"group": "ray.io", "version": "v1", "plural": "rayservices"}


def rayservice_patch(obj: dict, model: str, stable: int, canary: int | None, weight: float,
                     shadow: float) -> dict:
    """The merge patch that sets new weights in a RayService's ``spec.serveConfigV2``.

    It carries the object's ``resourceVersion``, so the API server refuses it (409) if the
    RayService changed since it was read."""
    raw = (obj.get("spec") or {}).get("serveConfigV2")
    if not raw:
        raise TargetError("the RayService has no spec.serveConfigV2")
    doc = yaml.safe_load(raw)
    new = with_traffic(doc, model, stable, canary, weight, shadow)
    return {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": {"serveConfigV2": yaml.safe_dump(new, sort_keys=False)}}


class RayServiceTarget:
    """A KubeRay RayService; needs only get and patch on rayservices in its namespace."""

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

    def read(self, model: str) -> Traffic:
        raw = (self._get().get("spec") or {}).get("serveConfigV2") or ""
        return traffic_of(yaml.safe_load(raw) or {}, model)

    def apply(self, model, stable, canary, weight, shadow) -> None:
        for _ in range(self.retries):
            patch = rayservice_patch(self._get(), model, stable, canary, weight, shadow)
            try:
                self.api.patch_namespaced_custom_object(
                    RAYSERVICE["group"], RAYSERVICE["version"], self.namespace,
                    RAYSERVICE["plural"], self.name, patch)
                return
            except Exception as e:
                if getattr(e, "status", None) == 409:  # changed since read: read again
                    continue
                raise TargetError(f"cannot patch RayService {self.namespace}/{self.name}: "
                                  f"{getattr(e, 'reason', e)}") from None
        raise TargetError(f"RayService {self.namespace}/{self.name} kept changing; gave up "
                          f"after {self.retries} conflicts")
