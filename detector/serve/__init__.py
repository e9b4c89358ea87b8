"""``detector serve``: the daemon that scores windows from Kafka, and the pieces it is made of.

messages.py   Message, OutRecord and the Source / Sink protocols the runner is written against
decode.py     one Kafka message -> a validated Window (or a WindowError with its reason code)
dlq.py        a message that failed -> its dead-letter record
observer.py   what the runner reports (counts), in one place a metrics exporter can replace
runner.py     the one loop: poll -> micro-batch -> decode -> score -> produce -> flush -> commit
kafka_io.py   KafkaSource / KafkaSink on kafka-python (the only module here that imports kafka)
fakes.py      in-memory Source and Sink for tests and for users' own tests
logs.py       structlog set-up (JSON lines, or console on a TTY)
daemon.py     wires settings, checkpoint, Kafka clients, signals and the runner together
"""
