"""detector: streaming event detection on Kafka telemetry with an LSTM encoder and calibrated binary heads."""

__version__ = "0.1.0"
