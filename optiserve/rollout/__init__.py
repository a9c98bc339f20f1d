"""Canary rollouts judged on Prometheus data, for a local Ray Serve or a KubeRay RayService."""

from .controller import Controller, ControllerMetrics, RolloutError, serve_metrics
from .prometheus import Prometheus, PrometheusUnavailable
from .state import RolloutSpec, RolloutState
from .store import ConfigMapStateStore, FileStateStore, StaleState
from .targets import LocalServeTarget, RayServiceTarget, TargetError, rayservice_patch

__all__ = [
    "Controller", "ControllerMetrics", "RolloutError", "serve_metrics", "Prometheus",
    "PrometheusUnavailable", "RolloutSpec", "RolloutState", "ConfigMapStateStore",
    "FileStateStore", "StaleState", "LocalServeTarget", "RayServiceTarget", "TargetError",
    "rayservice_patch",
]
