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

from .state import RolloutState, parse_state


_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
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
    def load(self, model: str) -> RolloutState | None:
        """The model's state (None: no rollout); UnreadableState when it cannot be used."""
    def save(self, state: RolloutState) -> RolloutState: ...
    def models(self) -> list[str]:
        """The models that may have a state, each read on its own (one unreadable state must
        not stop the others)."""


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
        return parse_state(path.read_text(), model)

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

    def models(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return [p.stem for p in sorted(self.dir.glob("*.json"))]


class ConfigMapStateStore:
    """One ConfigMap per model (``configmap_name(prefix, model)``, key ``state.json``), owned by
    the controller; saves carry resourceVersion, so a concurrent save answers 409 and is refused.

    Per model, so saves of different models never conflict and no model's history counts
    against another's 1 MiB. The models are those the target serves (``models``): the
    controller needs get/update on those ConfigMaps and create, never list."""

    KEY = "state.json"

    def __init__(self, core_api, namespace: str, prefix: str, models=None):
        self.api, self.namespace, self.prefix = core_api, namespace, prefix
        self._models = models or (lambda: [])

    def name(self, model: str) -> str:
        return configmap_name(self.prefix, model)

    def _read(self, model: str):
        from kubernetes.client.rest import ApiException

        try:
            return self.api.read_namespaced_config_map(self.name(model), self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def load(self, model: str) -> RolloutState | None:
        cm = self._read(model)
        raw = (cm.data or {}).get(self.KEY) if cm is not None else None
        return parse_state(raw, model) if raw else None

    def models(self) -> list[str]:
        return sorted(self._models())

    def save(self, state: RolloutState) -> RolloutState:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        from .state import now

        cm = self._read(state.model)
        if cm is not None:
            current = (cm.data or {}).get(self.KEY)
            if current and parse_state(current, state.model).revision != state.revision:
                raise StaleState(f"rollout of {state.model} changed since it was read")
        elif state.revision != 0:
            raise StaleState(f"rollout state of {state.model} was deleted since it was read")
        new = state.model_copy(update={"revision": state.revision + 1, "updated_at": now()})
        payload = new.model_dump_json()
        try:
            if cm is None:
                labels = {"app.kubernetes.io/managed-by": "optiserve-rollout-controller"}
                if _LABEL_VALUE.fullmatch(state.model):
                    labels["optiserve.io/model"] = state.model
                body = client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=self.name(state.model), labels=labels),
                    data={self.KEY: payload})
                self.api.create_namespaced_config_map(self.namespace, body)
            else:
                cm.data = {**(cm.data or {}), self.KEY: payload}
                # replace carries metadata.resourceVersion: a concurrent write answers 409
                self.api.replace_namespaced_config_map(self.name(state.model), self.namespace,
                                                       cm)
        except ApiException as e:
            if e.status == 409:  # replaced concurrently, or created by someone else first
                raise StaleState(f"ConfigMap {self.name(state.model)} changed concurrently"
                                 ) from None
            raise
        return new
