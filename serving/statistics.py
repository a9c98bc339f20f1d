"""Triton's per-version statistics (the OIP statistics extension, ``ModelStatistics`` over gRPC)
from what the gateway already records: a recorder that passes every call through and keeps
running totals of the few series the extension reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import metrics as M


@dataclass
class VersionStats:
    """Totals of one served version in this gateway replica since it started."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    inference_count: int = 0   # rows answered
    execution_count: int = 0   # batches run
    last_inference_ms: int = 0


class StatisticsRecorder:
    """Wraps a recorder (``inc``/``observe``/``set``/``forget``) and tallies per version:
    requests and their durations by success/failure, queue waits, rows, batches."""

    def __init__(self, inner):
        self.inner = inner
        self.versions: dict[tuple[str, str], VersionStats] = {}

    def _stats(self, tags: dict[str, str]) -> VersionStats | None:
        model, version = tags.get("model"), tags.get("version")
        if not model or not version:
            return None  # a request for an unknown model or version: no version to count on
        return self.versions.setdefault((model, version), VersionStats())

    def inc(self, spec, tags, value: float = 1.0):
        if spec is M.ROWS and value:
            st = self._stats(tags)
            if st is not None:
                st.inference_count += int(value)
                st.last_inference_ms = int(time.time() * 1000)
        return self.inner.inc(spec, tags, value)

    def observe(self, spec, tags, value: float):
        if spec is M.REQUEST_DURATION or spec is M.QUEUE_WAIT or spec is M.BATCH_SIZE:
            st = self._stats(tags)
            if st is not None:
                if spec is M.BATCH_SIZE:
                    st.execution_count += 1
                elif spec is M.QUEUE_WAIT:
                    st.queue_count += 1
                    st.queue_ns += int(value * 1e9)
                elif tags.get("outcome") == "success":
                    st.success_count += 1
                    st.success_ns += int(value * 1e9)
                elif tags.get("outcome") != "cancelled":
                    st.fail_count += 1
                    st.fail_ns += int(value * 1e9)
        return self.inner.observe(spec, tags, value)

    def set(self, spec, tags, value: float):
        return self.inner.set(spec, tags, value)

    def forget(self, spec, tags):
        return self.inner.forget(spec, tags)

    def __getattr__(self, name):  # flush(), close() and the rest of the inner recorder
        return getattr(self.inner, name)


__all__ = ["StatisticsRecorder", "VersionStats"]
