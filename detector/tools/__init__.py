"""Moving streams in and out of Kafka for people and scripts: ``replay`` (recording -> topic), ``record``
(topic -> recording) and ``alerts`` (alert or output topic -> readable lines).

None of them joins a consumer group: consumers are assigned every partition of their topic, so they can
never take partitions from the daemon's group or move its offsets.
"""
