"""Where rollout state lives: a JSON file per model next to the repository, or a ConfigMap.

Both refuse a save based on a stale read (``revision`` / ``resourceVersion``), so two
controllers can't both apply a step.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .state import RolloutState


_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def configmap_name(prefix: str, model: str) -> str:
    """The ConfigMap holding ``model``'s rollout state: ``<prefix>-<model>`` when the model name
    is a valid Kubernetes name as it is, else a sanitized name plus 8 hex digits of the name's
    sha256 (so ``My_Model`` and ``my-model`` never share one). The chart computes the same."""
    if _DNS_NAME.fullmatch(model):
        return f"{prefix}-{model}"
    clean = re.sub(r"[^a-z0-9.-]", "-", model.lower()).strip("-.") or "model"
    return f"{prefix}-{clean}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


class StaleState(Exception):
    """Someone saved this rollout since it was read; read again."""


class StateStore(Protocol):
    def load(self, model: str) -> RolloutState | None: ...
    def save(self, state: RolloutState) -> RolloutState: ...
    def list(self) -> list[RolloutState]: ...


class FileStateStore:
    """``<dir>/<model>.json``, written atomically (temp file, fsync, rename) under a lock."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def _path(self, model: str) -> Path:
        return self.dir / f"{model}.json"

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self, model: str) -> RolloutState | None:
        path = self._path(model)
        if not path.is_file():
            return None
        return RolloutState.model_validate_json(path.read_text())

    def save(self, state: RolloutState) -> RolloutState:
        from .state import now

        with self._locked():
            current = self.load(state.model)
            if current is not None and current.revision != state.revision:
                raise StaleState(f"rollout of {state.model} changed since it was read "
                                 f"(revision {state.revision} vs {current.revision})")
            new = state.model_copy(update={"revision": state.revision + 1, "updated_at": now()})
            tmp = self._path(state.model).with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.write(new.model_dump_json(indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(state.model))
            return new

    def list(self) -> list[RolloutState]:
        if not self.dir.is_dir():
            return []
        return [RolloutState.model_validate_json(p.read_text())
                for p in sorted(self.dir.glob("*.json"))]


class ConfigMapStateStore:
    """One ConfigMap owned by the controller, a key per model; saves use resourceVersion."""

    def __init__(self, core_api, namespace: str, name: str):
        self.api, self.namespace, self.name = core_api, namespace, name

    def _read(self):
        from kubernetes.client.rest import ApiException

        try:
            return self.api.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def load(self, model: str) -> RolloutState | None:
        cm = self._read()
        raw = (cm.data or {}).get(f"{model}.json") if cm is not None else None
        return RolloutState.model_validate_json(raw) if raw else None

    def list(self) -> list[RolloutState]:
        cm = self._read()
        data = (cm.data or {}) if cm is not None else {}
        return [RolloutState.model_validate_json(v) for k, v in sorted(data.items())
                if k.endswith(".json")]

    def save(self, state: RolloutState) -> RolloutState:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        from .state import now

        cm = self._read()
        key = f"{state.model}.json"
        if cm is not None:
            current = (cm.data or {}).get(key)
            if current and RolloutState.model_validate_json(current).revision != state.revision:
                raise StaleState(f"rollout of {state.model} changed since it was read")
        new = state.model_copy(update={"revision": state.revision + 1, "updated_at": now()})
        payload = new.model_dump_json()
        try:
            if cm is None:
                body = client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=self.name, labels={
                        "app.kubernetes.io/managed-by": "optiserve-rollout-controller"}),
                    data={key: payload})
                self.api.create_namespaced_config_map(self.namespace, body)
            else:
                cm.data = {**(cm.data or {}), key: payload}
                # replace carries metadata.resourceVersion: a concurrent write answers 409
                self.api.replace_namespaced_config_map(self.name, self.namespace, cm)
        except ApiException as e:
            if e.status == 409:
                raise StaleState(f"ConfigMap {self.name} changed concurrently") from None
            raise
        return new

