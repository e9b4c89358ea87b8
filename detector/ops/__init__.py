"""Operating ``detector serve``: what runs beside the loop, not in it.

metrics.py   every Prometheus metric, defined once, and PrometheusObserver (the runner's Observer)
http.py      /metrics, /healthz and /readyz on a small HTTP server bounded against slow clients; Health
model_check.py  validated_scorer: the one check of a checkpoint before it serves, at start-up and on reload
reload.py    CheckpointWatcher: a new checkpoint file is validated off the hot path, then taken between batches
alerts.py    AlertTracker: per-series raise/clear hysteresis over scored records (pure)

None of these is imported by the scoring core; the daemon wires them to the runner.
"""
