#!/usr/bin/env python3
"""Generate the Grafana dashboards (peagen-main.json, peagen-cost.json).

Run `python3 packaging/grafana/generate.py` after editing; CI
(scripts/check-promtool.sh) fails when the committed JSON differs from the
output, and when a query uses a metric outside
packaging/prometheus/metric-names.txt.
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(pid, title, targets, x, y, w=12, h=8, unit="short", kind="timeseries",
          desc="", stack=False):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [
            {"datasource": DS, "refId": chr(ord("A") + i), "expr": e, "legendFormat": lf}
            for i, (e, lf) in enumerate(targets)
        ],
    }
    if kind == "timeseries" and stack:
        p["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return p


def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def dashboard(uid, title, panels, desc):
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["peagen"],
        "timezone": "",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "instance", "label": "Spawner host", "type": "query", "datasource": DS,
             "query": {"query": "label_values(peagen_build_info, instance)", "refId": "I"},
             "definition": "label_values(peagen_build_info, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2,
             "hide": 0},
        ]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


I = '{instance=~"$instance"}'


main = dashboard("peagen-main", "Peagen fabric / Main", [
    row(1, "Queue", 0),
    panel(2, "Pending tasks by kind", [(f"max by (kind) (peagen_queue_pending_total{I})", "{{kind}}")],
          0, 1, 8, stack=True, desc="Tasks waiting in the tasks stream (alert: > 50 for 10 min)."),
    panel(3, "Delivered, not acknowledged (PEL)", [(f"max by (stream) (peagen_redis_queue_pending{I})", "{{stream}}")],
          8, 1, 8, desc="Entries read by a worker and not yet acknowledged."),
    panel(4, "Queue lag", [(f"max(peagen_queue_lag{I})", "lag"),
                           (f"max(peagen_queue_delayed{I})", "delayed retries")], 16, 1, 8,
          desc="Entries of the tasks stream not yet delivered to the group, and retries "
               "waiting out their backoff (not backlog until due)."),
    panel(5, "Stream memory", [(f"max by (stream) (peagen_redis_stream_memory_bytes{I})", "{{stream}}")],
          0, 9, 12, unit="bytes", desc="Redis MEMORY USAGE of each stream (alert: > 500 MB)."),
    panel(6, "Retries, dead letters, reclaimed", [
        (f"sum(rate(peagen_tasks_retried_total{I}[5m]))", "retried"),
        (f"sum by (reason) (rate(peagen_tasks_dead_lettered_total{I}[5m]))", "dead-lettered {{reason}}"),
        (f"sum by (outcome) (rate(peagen_reclaimed_tasks_total{I}[5m]))", "reclaim {{outcome}}"),
    ], 12, 9, 12, unit="ops",
          desc="Dead letters come from workers (by reason) and from the spawner's reclaim of dead "
               "workers' tasks (reclaim dead_lettered: attempts used up or poison); reclaim "
               "requeued = tasks of dead workers put back."),
    row(7, "Workers", 17),
    panel(8, "Workers by state", [
        (f"sum by (state) (peagen_workers{I})", "{{state}}"),
    ], 0, 18, 8, stack=True,
          desc="starting, idle, busy, stopping. A worker that held a task in the last 3 s counts "
               "as busy, so a worker between two tasks does not make the gauge flap."),
    panel(9, "Desired vs running", [
        (f"sum(peagen_workers_desired{I})", "desired"),
        (f"sum(peagen_workers{I})", "running"),
    ], 8, 18, 8),
    panel(10, "Spawns, stops, failures", [
        (f"sum(rate(peagen_spawns_total{I}[5m]))", "spawns"),
        (f"sum(rate(peagen_worker_stops_total{I}[5m]))", "stops"),
        (f"sum(rate(peagen_spawn_failures_total{I}[5m]))", "spawn failures"),
    ], 16, 18, 8, unit="ops"),
    panel(11, "Spawn-to-ready latency", [
        (f"histogram_quantile(0.5, sum by (le) (rate(peagen_spawn_ready_seconds_bucket{I}[5m])))", "p50"),
        (f"histogram_quantile(0.95, sum by (le) (rate(peagen_spawn_ready_seconds_bucket{I}[5m])))", "p95"),
    ], 0, 26, 8, unit="s"),
    panel(12, "Worker exits by reason", [
        (f"sum by (reason) (increase(peagen_worker_exit_reason_total{I}[10m]))", "{{reason}}"),
    ], 8, 26, 8, desc="Per 10 minutes (alert: more than 5 error exits)."),
    panel(13, "Spawner circuit breaker", [(f"max by (instance) (peagen_spawner_breaker_open{I})", "{{instance}}")],
          16, 26, 8, kind="stat", desc="1 = open: worker starts suspended after repeated failures."),
    row(14, "Task speed", 34),
    panel(15, "Tasks per second by status", [
        (f"sum by (status) (rate(peagen_tasks_total{I}[5m]))", "{{status}}"),
    ], 0, 35, 8, unit="ops", stack=True),
    panel(16, "Task duration p50 / p95 by kind", [
        (f"histogram_quantile(0.5, sum by (kind, le) (rate(peagen_task_duration_seconds_bucket{I}[5m])))", "p50 {{kind}}"),
        (f"histogram_quantile(0.95, sum by (kind, le) (rate(peagen_task_duration_seconds_bucket{I}[5m])))", "p95 {{kind}}"),
    ], 8, 35, 8, unit="s"),
    panel(17, "Handler failure ratio by kind", [
        (f"sum by (handler) (rate(peagen_handler_fail_total{I}[5m])) / sum by (handler) (rate(peagen_handler_calls_total{I}[5m]))", "{{handler}}"),
    ], 16, 35, 8, unit="percentunit",
          desc="Share of handler calls (retries included) that failed, per task kind, over 5 "
               "minutes; at most 100 %. Alert: above 10 % with at least 10 calls, for 2 minutes."),
    panel(18, "Result backend failures", [
        (f"sum(increase(peagen_result_backend_fail_total{I}[5m]))", "per 5 min"),
    ], 0, 43, 12),
    panel(19, "Version", [(f"count by (version) (peagen_build_info{I})", "{{version}}")],
          12, 43, 12, kind="stat"),
], "Queue, workers and task speed of the Peagen task fabric.")

cost = dashboard("peagen-cost", "Peagen fabric / Cost", [
    row(1, "LLM tokens", 0),
    panel(2, "Tokens per second by backend", [
        (f"sum by (backend) (rate(peagen_llm_tokens_total{I}[5m]))", "{{backend}}"),
    ], 0, 1, 12, stack=True,
          desc="Prompt + completion tokens from the LLM backends' usage numbers "
               "(alert PeagenTokenSpike: over 10/s and 2x the previous hour)."),
    panel(3, "Tokens per second by kind and type", [
        (f"sum by (kind, type) (rate(peagen_llm_tokens_total{I}[5m]))", "{{kind}} {{type}}"),
    ], 12, 1, 6, stack=True, desc="type = prompt or completion (providers price them differently)."),
    panel(4, "Tokens in range by backend", [
        (f"sum by (backend) (increase(peagen_llm_tokens_total{I}[$__range]))", "{{backend}}"),
    ], 18, 1, 6, kind="stat"),
    row(5, "Budget", 9),
    panel(6, "30-day forecast vs budget (tokens)", [
        ("peagen:llm_tokens:forecast_30d", "forecast: last 24 h's rate x 30 days"),
        ("peagen:llm_tokens:used_30d", "used in the last 30 days"),
        ("peagen:llm_budget_tokens:30d", "budget"),
    ], 0, 10, 12,
          desc="Recorded by peagen-alerts.yml (group peagen-llm-budget; the budget is a constant "
               "there). Alerts: forecast above budget for 30 min (warning), used above 80 % "
               "(critical). Fleet-wide: the host filter does not apply."),
    panel(7, "Forecast cost, 30 days", [
        ("peagen:llm_cost:forecast_30d", "cost"),
    ], 12, 10, 6, kind="stat",
          desc="Forecast tokens x peagen:llm_price_per_1k_tokens / 1000 (a constant in "
               "peagen-alerts.yml), in your currency."),
    panel(8, "Budget refusals by reason (per 5 min)", [
        (f"sum by (reason) (increase(peagen_budget_refusals_total{I}[5m]))", "{{reason}}"),
    ], 18, 10, 6,
          desc="Tasks finished as skip without an LLM call: budget_exhausted (workflow token "
               "budget) or run_timeout (workflow run timeout). peagenctl budget show WORKFLOW."),
    row(9, "LLM requests and rate limits", 18),
    panel(10, "Requests per second by backend and outcome", [
        (f"sum by (backend, outcome) (rate(peagen_llm_requests_total{I}[5m]))", "{{backend}} {{outcome}}"),
    ], 0, 19, 8, unit="reqps", stack=True,
          desc="outcome: ok, rate_limited (provider 429), server_error, client_error, timeout, "
               "connect_error, bad_response."),
    panel(11, "Request latency p50 / p95 by backend", [
        (f"histogram_quantile(0.5, sum by (backend, le) (rate(peagen_llm_request_duration_seconds_bucket{I}[5m])))", "p50 {{backend}}"),
        (f"histogram_quantile(0.95, sum by (backend, le) (rate(peagen_llm_request_duration_seconds_bucket{I}[5m])))", "p95 {{backend}}"),
    ], 8, 19, 8, unit="s"),
    panel(12, "Rate-limit waits and deferrals", [
        (f"sum by (backend) (rate(peagen_llm_ratelimit_wait_seconds_total{I}[5m]))", "waiting workers {{backend}}"),
        (f"sum by (backend) (rate(peagen_llm_ratelimit_deferred_total{I}[5m])) * 60", "deferrals/min {{backend}}"),
    ], 16, 19, 8,
          desc="Seconds spent waiting for a rate-limit token per second (= workers waiting on "
               "average), and tasks handed back to the delayed set per minute because no token "
               "came in time (alert: more than 5 per 5 min for 15 min)."),
    row(13, "Worker time", 27),
    panel(14, "Worker-seconds per second by task kind", [
        (f"sum by (kind) (rate(peagen_worker_runtime_seconds_total{I}[5m]))", "{{kind}}"),
    ], 0, 28, 12, stack=True,
          desc="Time workers spent running each kind (average workers busy with it): the "
               "compute cost of mutate vs execute."),
    panel(15, "Worker-hours in range by kind", [
        (f"sum by (kind) (increase(peagen_worker_runtime_seconds_total{I}[$__range])) / 3600", "{{kind}}"),
    ], 12, 28, 6, kind="stat", desc="Multiply by the hourly price of a worker slot for cost."),
    panel(16, "Utilisation (busy / up)", [
        (f"sum(rate(peagen_worker_busy_seconds_total{I}[1h])) / sum(rate(peagen_worker_up_seconds_total{I}[1h]))", "busy share"),
    ], 18, 28, 6, unit="percentunit", kind="stat",
          desc="Low utilisation: lower spawner.warm-pool or idle-timeout-secs."),
    panel(17, "Worker-seconds per second (average workers up / busy)", [
        (f"sum(rate(peagen_worker_up_seconds_total{I}[5m]))", "up"),
        (f"sum(rate(peagen_worker_busy_seconds_total{I}[5m]))", "busy"),
    ], 0, 36, 8),
    panel(18, "Worker-hours up in range", [
        (f"sum(increase(peagen_worker_up_seconds_total{I}[$__range])) / 3600", "worker-hours"),
    ], 8, 36, 4, kind="stat", desc="Includes idle warm-pool time."),
    panel(19, "Tokens per task by kind", [
        (f"sum by (kind) (rate(peagen_llm_tokens_total{I}[1h])) / sum by (kind) (rate(peagen_tasks_total{I}[1h]))", "{{kind}}"),
    ], 12, 36, 6),
    panel(20, "Tasks completed in range by kind", [
        (f"sum by (kind) (increase(peagen_tasks_total{I}[$__range]))", "{{kind}}"),
    ], 18, 36, 6, kind="stat"),
], "LLM tokens, budget forecast, rate limits and worker time of the Peagen task fabric, for cost accounting.")

here = os.path.dirname(os.path.abspath(__file__))
out = {"peagen-main.json": main, "peagen-cost.json": cost}
check = "--check" in sys.argv
bad = False
for name, d in out.items():
    text = json.dumps(d, indent=2, sort_keys=True) + "\n"
    path = os.path.join(here, name)
    if check:
        with open(path) as f:
            if f.read() != text:
                print(f"{path} is stale: run {sys.argv[0]}", file=sys.stderr)
                bad = True
    else:
        with open(path, "w") as f:
            f.write(text)
sys.exit(1 if bad else 0)
