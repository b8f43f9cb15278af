"""`promtool test rules` input for the rendered alert rules, computed from monitoring.alerts: for
every rule, a synthetic bad series (beyond the threshold, for longer than the rule's pending time)
that must fire, and a healthy one (well inside the threshold) that must stay quiet.

Firing is asserted on the ALERTS series (promql_expr_test) rather than with alert_rule_test,
whose exact-match annotations would pin the humanized values; quiet is asserted with an empty
alert_rule_test. Pure: config in, YAML text out."""

from __future__ import annotations

import math

import yaml

from flashfit_ops.config.model import Config, format_duration
from flashfit_contract.metrics import (
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUESTS_TOTAL,
    MODEL_INFERENCE_DURATION_SECONDS,
)

RULES_FILE = "alert_rules.yml"
JOB = "flashfit-backend"
INSTANCE = "flashfit-backend-blue-1-x:8080"
# Requests per sample interval in the synthetic counters.
PER_STEP = 1000


def _counter(step: float, count: int) -> str:
    return f"0+{step:g}x{count}"


def _error_series(share: float, count: int) -> list[dict]:
    errors = math.floor(PER_STEP * share)
    return [
        {"series": f'{HTTP_REQUESTS_TOTAL}{{job="{JOB}",status="500",method="GET",endpoint="/api/v1/recommend"}}', "values": _counter(errors, count)},
        {"series": f'{HTTP_REQUESTS_TOTAL}{{job="{JOB}",status="200",method="GET",endpoint="/api/v1/recommend"}}', "values": _counter(PER_STEP - errors, count)},
    ]


def _latency_series(limit: float, slow: bool, count: int) -> list[dict]:
    """Every observation in (2*limit, 4*limit] when slow (p95 near 3.9*limit), else in (0, limit/2]."""
    bounds = [limit / 2, limit, 2 * limit, 4 * limit]
    first_full = 3 if slow else 0
    series = []
    for index, bound in enumerate(bounds):
        step = 100 if index >= first_full else 0
        series.append({"series": f'{HTTP_REQUEST_DURATION_SECONDS}_bucket{{job="{JOB}",le="{bound!r}"}}', "values": _counter(step, count)})
    series.append({"series": f'{HTTP_REQUEST_DURATION_SECONDS}_bucket{{job="{JOB}",le="+Inf"}}', "values": _counter(100, count)})
    return series


def _inference_series(limit: float, slow: bool, count: int) -> list[dict]:
    mean = 2 * limit if slow else limit / 2
    labels = f'job="{JOB}",model_name="clip"'
    return [
        {"series": f"{MODEL_INFERENCE_DURATION_SECONDS}_sum{{{labels}}}", "values": _counter(10 * mean, count)},
        {"series": f"{MODEL_INFERENCE_DURATION_SECONDS}_count{{{labels}}}", "values": _counter(10, count)},
    ]


def _up_series(value: int, count: int) -> list[dict]:
    return [{"series": f'up{{job="{JOB}",instance="{INSTANCE}"}}', "values": f"{value}x{count}"}]


def rule_tests(config: Config, rules_file: str = RULES_FILE) -> str:
    alerts = config.monitoring.alerts
    # Samples every fifth of the rate window, so each rate sees several; long enough for the
    # slowest rule (twice the pending time) to have fired.
    interval = max(1.0, alerts.window / 5)
    horizon = alerts.window + 2 * alerts.pending + 3 * interval
    count = math.ceil(horizon / interval) + 2
    at = format_duration(round(horizon / interval) * interval)
    share_bad = (1 + alerts.error_rate) / 2
    share_ok = alerts.error_rate / 2

    cases = [
        ("BackendDown", "critical", {"instance": INSTANCE, "job": JOB}, _up_series(0, count), _up_series(1, count)),
        ("HighErrorRate", "critical", {}, _error_series(share_bad, count), _error_series(share_ok, count)),
        ("SlowResponses", "warning", {}, _latency_series(alerts.p95_seconds, True, count), _latency_series(alerts.p95_seconds, False, count)),
        (
            "SlowModelInference", "warning", {"model_name": "clip"},
            _inference_series(alerts.inference_seconds, True, count), _inference_series(alerts.inference_seconds, False, count),
        ),
    ]
    groups = []
    for name, severity, labels, bad, healthy in cases:
        expected = {"alertname": name, "alertstate": "firing", "severity": severity, **labels}
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(expected.items()))
        groups.append({
            "name": f"{name} fires on a bad series",
            "interval": format_duration(interval),
            "input_series": bad,
            "promql_expr_test": [{"expr": f'ALERTS{{alertname="{name}",alertstate="firing"}}', "eval_time": at,
                                  "exp_samples": [{"labels": f"ALERTS{{{selector}}}", "value": 1}]}],
        })
        groups.append({
            "name": f"{name} stays quiet on a healthy series",
            "interval": format_duration(interval),
            "input_series": healthy,
            "alert_rule_test": [{"alertname": name, "eval_time": at, "exp_alerts": []}],
            "promql_expr_test": [{"expr": f'ALERTS{{alertname="{name}"}}', "eval_time": at, "exp_samples": []}],
        })
    document = {"rule_files": [rules_file], "evaluation_interval": format_duration(interval), "tests": groups}
    header = "# Rendered by flashfit: `promtool test rules` proves each alert fires on a bad series and not on a healthy one.\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=200)
