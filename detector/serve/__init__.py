"""``detector serve``: the daemon that scores windows from Kafka, and the pieces it is made of.

messages.py     Message, OutRecord and the Source / Sink protocols the runner is written against
decode.py       one message -> a validated Window (or a WindowError with its reason code)
dlq.py          a message that failed -> its dead-letter record
observer.py     what the runner reports (counts), in one place a metrics exporter can replace
checkpointing.py  what may be committed: CommitTracker
runner.py       the one loop: poll -> micro-batch -> decode -> score -> produce -> flush -> commit
kafka_io.py     KafkaSource / KafkaSink on clients from detector.kafka_clients
files.py        FileSource / FileSink: the same loop over a recording (replay --offline)
fakes.py        in-memory Source and Sink for tests and for users' own tests
model_check.py  build_scorer (settings -> Scorer) and validated_scorer, the check before a model serves
reload.py       CheckpointWatcher: a new checkpoint file is validated off the hot path, taken between batches
health.py       Health: liveness and readiness state, set by the loop
http.py         /metrics, /healthz and /readyz on a small HTTP server bounded against slow clients
metrics.py      every Prometheus metric, defined once, and PrometheusObserver (the runner's Observer)
logs.py         structlog set-up (JSON lines, or console on a TTY)
daemon.py       wires settings, checkpoint, Kafka clients, signals and the runner together

Layers (enforced by ``make lint``): the scoring core below knows nothing of this package.
"""
