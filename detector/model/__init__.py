"""The model core: network, features, checkpoints, calibration, thresholds, injection, training.

Pure: no Kafka, no logging, no I/O beyond checkpoint files.
"""
