"""A small client of Prometheus' HTTP query API."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not be queried; no decision may be taken on its (missing) data."""


class Prometheus:
    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> float | None:
        """The scalar value of an instant query; None when it returns no series or NaN."""
        result = self._result(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusUnavailable(f"{expr!r} returned {len(result)} series, expected one")
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def query_vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Every series of an instant query with its labels (NaN values left out)."""
        out = []
        for r in self._result(expr):
            value = float(r["value"][1])
            if not math.isnan(value):
                out.append((r.get("metric") or {}, value))
        return out

    def _result(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} rejected {expr!r}: {e.code} "
                f"{e.read().decode(errors='replace')[:300]}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} is unreachable ({getattr(e, 'reason', e)})") from None
        if doc.get("status") != "success":
            raise PrometheusUnavailable(f"Prometheus query failed: {doc.get('error')}")
        return doc["data"]["result"]
