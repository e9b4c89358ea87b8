"""The one frozen settings tree of detector, and how it is loaded.

Every value comes from one of four places; a higher one wins, key by key (nested sections merge, so a
YAML file may set ``kafka.input_topic`` while the environment sets ``DETECTOR_KAFKA__GROUP_ID``):

    1. keyword overrides passed to ``load_settings``
    2. environment variables ``DETECTOR_<SECTION>__<NAME>`` (or the ``environ`` mapping given instead)
    3. the YAML file given with ``--config`` (the same names, nested: ``kafka: {input_topic: in}``)
    4. the defaults below

The secrets of ``SECRET_FILE_SETTINGS`` may instead come from a file, the way Docker and Kubernetes mount
them: ``DETECTOR_KAFKA__SASL_PASSWORD_FILE=/run/secrets/kafka-password`` sets ``kafka.sasl_password`` to the
file's text (at most ``SECRET_FILE_MAX_BYTES``, trailing line breaks dropped), at the environment's rank.

Only this module reads the environment. ``Settings`` is frozen: build it once and pass it down.
Any problem (a missing or malformed file, an unknown key, an invalid value) raises ``ConfigError`` with a
one-line message naming the setting in both its dotted and its environment form.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails, to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from detector.errors import ConfigError
from detector.model.config import TrainConfig

ENV_PREFIX = "DETECTOR_"
ENV_DELIMITER = "__"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# The settings that also read DETECTOR_<SECTION>__<NAME>_FILE, a file holding the value.
SECRET_FILE_SETTINGS = ("kafka.sasl_username", "kafka.sasl_password", "kafka.ssl_password")
SECRET_FILE_MAX_BYTES = 64 * 1024  # far above any password; a larger file is refused, never read whole
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def env_name(dotted: str) -> str:
    """The environment variable of a setting: ``kafka.sasl_password`` -> ``DETECTOR_KAFKA__SASL_PASSWORD``."""
    return ENV_PREFIX + ENV_DELIMITER.join(dotted.split(".")).upper()


def settings_env(base: Mapping[str, str], **sections: Mapping[str, object]) -> dict[str, str]:
    """An environment that configures a child process by DETECTOR_* variables alone: ``base`` less every
    variable whose name starts with DETECTOR_ (in any case), plus each setting given, nested like
    ``load_settings``'s overrides, under its :func:`env_name` with ``str(value)``:
    ``kafka={"group_id": "g"}`` -> ``DETECTOR_KAFKA__GROUP_ID=g``."""
    env = {key: value for key, value in base.items() if not key.upper().startswith(ENV_PREFIX)}
    for section, values in sections.items():
        for name, value in values.items():
            env[env_name(f"{section}.{name}")] = str(value)
    return env


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Broker, topics, consumer group and cluster security."""

    bootstrap_servers: str = "127.0.0.1:9092"  # host:port,...
    input_topic: str = "windows"
    output_topic: str = "scores"
    dlq_topic: str = "windows.dlq"
    alert_topic: str = "alerts"  # alert transitions; empty = off
    group_id: str = "detector"  # the consumer group: replicas sharing it share the partitions
    client_id: str = "detector"
    # The embedded broker wants shorter group timings and fetch wait: detector.broker.CLIENT_SETTINGS.
    session_timeout_ms: int = Field(default=45000, gt=0)
    heartbeat_interval_ms: int = Field(default=3000, gt=0)  # < session_timeout_ms
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"  # where a group with no commits starts
    # How long the broker may hold a fetch that finds no new records. Apache Kafka answers as soon as records
    # arrive, so this only paces idle fetches there. The embedded broker (Tansu) answers such a fetch late,
    # and records arriving meanwhile wait up to this long: use 10 there (configs/dev.yaml).
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=60_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # Required by the SASL_* protocols, refused by the others (they would connect unauthenticated).
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validate_default=True
    )
    sasl_username: str | None = None  # or DETECTOR_KAFKA__SASL_USERNAME_FILE
    # From DETECTOR_KAFKA__SASL_PASSWORD or DETECTOR_KAFKA__SASL_PASSWORD_FILE; YAML works but keeps it on disk.
    sasl_password: SecretStr | None = None
    # The TLS settings are only for the SSL and SASL_SSL protocols; the others refuse them (they would
    # connect without TLS). Kafka clients check that each file loads before their first connection.
    ssl_cafile: str | None = None  # CA bundle to verify the brokers; None = the system store
    ssl_certfile: str | None = None  # client certificate (PEM) for mutual TLS; needs ssl_keyfile
    # Its private key (PEM; the same path when one file holds both); needs ssl_certfile.
    ssl_keyfile: str | None = Field(default=None, validate_default=True)
    ssl_password: SecretStr | None = None  # decrypts an encrypted ssl_keyfile; or DETECTOR_KAFKA__SSL_PASSWORD_FILE

    @field_validator(
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("sasl_mechanism")
    @classmethod
    def _mechanism_fits_protocol(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol")
        if protocol is None:  # itself invalid, and reported
            return value
        if protocol in _SASL_PROTOCOLS and value is None:
            raise ValueError(f"required with security_protocol {protocol}")
        if protocol not in _SASL_PROTOCOLS and value is not None:
            raise ValueError(
                f"{value} needs security_protocol SASL_PLAINTEXT or SASL_SSL; with {protocol} no SASL would happen"
            )
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
    @classmethod
    def _tls_fits_protocol(cls, value: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("security_protocol")
        if value is not None and protocol is not None and protocol not in _TLS_PROTOCOLS:
            raise ValueError(f"needs security_protocol SSL or SASL_SSL; with {protocol} no TLS would happen")
        return value

    @field_validator("ssl_keyfile")
    @classmethod
    def _key_with_certificate(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "ssl_certfile" not in info.data:  # itself invalid, and reported
            return value
        if value is None and info.data["ssl_certfile"] is not None:
            raise ValueError("required with kafka.ssl_certfile: a client certificate needs its private key")
        if value is not None and info.data["ssl_certfile"] is None:
            raise ValueError("set without kafka.ssl_certfile: a private key needs its client certificate")
        return value

    @field_validator("ssl_password")
    @classmethod
    def _password_with_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and "ssl_keyfile" in info.data and info.data["ssl_keyfile"] is None:
            raise ValueError("set without kafka.ssl_keyfile: it only decrypts that key")
        return value

    @field_validator("heartbeat_interval_ms")
    @classmethod
    def _heartbeat_below_session(cls, value: int, info: ValidationInfo) -> int:
        session = info.data.get("session_timeout_ms")
        if session is not None and value >= session:
            raise ValueError(f"must be below session_timeout_ms ({session})")
        return value


class ModelSettings(_Section):
    """Which checkpoint to serve and where to run it."""

    checkpoint: Path | None = None  # required by `serve` (checked there), watched for new versions
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # autocast on CUDA; CPU stays fp32 (see cpu_bf16)
    # Opt in to bfloat16 on the CPU, where the CPU computes it natively (AVX512-BF16 or AMX): faster, with
    # probabilities within ~0.03 of fp32. Elsewhere it scores in fp32, with a warning.
    cpu_bf16: bool = False
    # CPU threads torch may use for scoring in `serve`; 0 = one fewer than the CPUs this process may use (cgroup
    # quota and affinity counted; at least 1), which leaves a core to the Kafka clients: torch's OpenMP threads
    # wait for each other at every barrier, so one that loses its core stalls the whole pass.
    cpu_threads: int = Field(default=0, ge=0)
    # A checkpoint `detector calibrate` never saw (window head calibration `none`): its probabilities are raw
    # sigmoids and its threshold a placeholder. refuse: `serve` exits 2 at start and rejects it on reload;
    # warn: it serves, with a warning at start and at each reload (for tests, benchmarks, random weights).
    uncalibrated: Literal["refuse", "warn"] = "refuse"

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value


class BatchSettings(_Section):
    """Micro-batching: score when max_size windows are in hand or the oldest has waited max_wait_ms."""

    max_size: int = Field(default=256, ge=1)
    max_wait_ms: int = Field(default=20, ge=0)


class ReloadSettings(_Section):
    """Checkpoint hot-swap."""

    poll_seconds: float = Field(default=5.0, gt=0)  # how often the checkpoint file is checked for a change


class AlertSettings(_Section):
    """Hysteresis of the alert topic."""

    raise_after: int = Field(default=3, ge=1)  # consecutive flagged windows before "raised"
    clear_after: int = Field(default=5, ge=1)  # consecutive clean windows before "cleared"


class LimitSettings(_Section):
    """Input guards."""

    max_message_bytes: int = Field(default=1_048_576, ge=1)  # larger input goes to the DLQ as `oversize`
    # Memory for the history of every series (about 4,570 bytes per feature per series); past it the least
    # recently seen series are forgotten, and one that returns starts cold.
    history_mib: int = Field(default=256, ge=1)


class HttpSettings(_Section):
    """The /metrics, /healthz and /readyz endpoints."""

    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)  # 0 = any free port


class LogSettings(_Section):
    """structlog output."""

    format: Literal["json", "console"] | None = None  # None = console on a TTY, else json
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def resolved_format(self, isatty: bool) -> Literal["json", "console"]:
        """The format set, else ``console`` when the output is a TTY and ``json`` otherwise."""
        if self.format is not None:
            return self.format
        return "console" if isatty else "json"


class Settings(BaseSettings):
    """Everything detector can be configured with; build it with ``load_settings``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    model: ModelSettings = ModelSettings()
    batch: BatchSettings = BatchSettings()
    reload: ReloadSettings = ReloadSettings()
    alerts: AlertSettings = AlertSettings()
    limits: LimitSettings = LimitSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    train: TrainConfig = TrainConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config, environ = _inputs.get()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            _EnvironSource(settings_cls, os.environ if environ is None else environ),
        ]
        if config is not None:
            sources.append(_YamlSource(settings_cls, yaml_file=config))
        return tuple(sources)


# The YAML file and environment of the `load_settings` call in progress. A ContextVar keeps concurrent
# calls (threads, tasks) apart, which a class attribute would not; outside a call: no file, os.environ.
_inputs: ContextVar[tuple[Path | None, Mapping[str, str] | None]] = ContextVar(
    "detector_settings_inputs", default=(None, None)
)


class _EnvironSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``, with the ``_FILE`` form
    of ``SECRET_FILE_SETTINGS`` read in place of the variable it names."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # names are matched case-insensitively (case_sensitive is off), as the base class does
        env = {key.lower(): value for key, value in self._environ.items()}
        for dotted in SECRET_FILE_SETTINGS:
            name = env_name(dotted)
            path = env.pop(name.lower() + "_file", None)
            if not path:  # unset, or empty: unset like any empty optional value
                continue
            if name.lower() in env:
                raise ConfigError(f"both {name} and {name}_FILE are set: keep one")
            env[name.lower()] = _read_secret_file(name + "_FILE", path)
        return env


def _read_secret_file(variable: str, path: str) -> str:
    """The text of a secret file, without its trailing line breaks; ConfigError naming ``variable`` when it
    is not a readable regular file of UTF-8 text of 1 to ``SECRET_FILE_MAX_BYTES`` bytes. Never blocks on a
    FIFO and never reads past the limit."""
    where = f"{variable}={path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"cannot read {where}: {err.strerror or err}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"cannot read {where}: not a regular file")
        data = b""
        while len(data) <= SECRET_FILE_MAX_BYTES and (chunk := os.read(fd, SECRET_FILE_MAX_BYTES + 1 - len(data))):
            data += chunk
    except OSError as err:
        raise ConfigError(f"cannot read {where}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > SECRET_FILE_MAX_BYTES:
        raise ConfigError(f"{where} is larger than {SECRET_FILE_MAX_BYTES} bytes: not a secret")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{where} is empty")
    return text


class _YamlSource(YamlConfigSettingsSource):
    """The YAML file source, failing with ConfigError where the stock one would be silent or vague."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except OSError as err:
            raise ConfigError(f"cannot read config file {file_path}: {err.strerror or err}") from err
        except yaml.YAMLError as err:
            detail = " ".join(str(err).split())
            raise ConfigError(f"config file {file_path} is not valid YAML: {detail}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping, not a {type(data).__name__}")
        # a section whose keys are all commented out parses as null: treat it as empty
        return {key: value for key, value in data.items() if value is not None}


def load_settings(config: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``overrides`` > ``environ`` (default ``os.environ``) > ``config`` > defaults.

    ``overrides`` are nested like the YAML file (``kafka={"group_id": "g"}``) and merge with the other
    sources key by key. Raises ``ConfigError`` (one line) for any problem; never reads ``.env`` files.
    """
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise ConfigError(f"config file {config} does not exist or is not a file")
    token = _inputs.set((config, environ))
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(error) for error in err.errors())) from err
    except SettingsError as err:  # e.g. DETECTOR_KAFKA='{...' (a whole section as JSON) that does not parse
        detail = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
        raise ConfigError("invalid setting: " + " ".join(detail.split())) from err
    finally:
        _inputs.reset(token)


def _describe(error: ErrorDetails) -> str:
    """One validation error as `invalid setting kafka.port (DETECTOR_KAFKA__PORT): <reason>`."""
    loc = [str(part) for part in error["loc"]]
    # a list index (train.network.event_types.1) has no environment form of its own
    names = itertools.takewhile(lambda part: isinstance(part, str), error["loc"])
    env = env_name(".".join(str(name) for name in names))
    what = "unknown setting" if error["type"] == "extra_forbidden" else "invalid setting"
    reason = " ".join(str(error["msg"]).split()).removeprefix("Value error, ")
    return f"{what} {'.'.join(loc)} ({env}): {reason}"


def security_warnings(settings: Settings) -> list[str]:
    """One line per setting that is valid but exposes a secret or the traffic (empty when none), for the
    start-up log. Settings that cannot work are refused at load instead."""
    k = settings.kafka
    warnings = []
    if k.security_protocol == "SASL_PLAINTEXT" and k.sasl_mechanism == "PLAIN":
        warnings.append(
            "kafka.sasl_mechanism PLAIN over security_protocol SASL_PLAINTEXT sends the SASL password to the "
            "brokers unencrypted: use SASL_SSL"
        )
    return warnings


def masked(settings: Settings) -> dict[str, Any]:
    """All settings as a JSON-safe dict, with every secret shown as ``"***"`` (for the start-up log)."""

    def mask(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***"
        if isinstance(value, dict):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [mask(item) for item in value]
        return value

    return to_jsonable_python(mask(settings.model_dump()))
