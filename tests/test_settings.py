"""The settings tree: defaults, source precedence, one-line errors, secrets, shipped configs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from detector.broker import CLIENT_SETTINGS
from detector.errors import ConfigError
from detector.settings import Settings, load_settings, masked, security_warnings, settings_env

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
_CLIENT_FIELDS = ("session_timeout_ms", "heartbeat_interval_ms", "fetch_max_wait_ms")


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_design_table() -> None:
    """With no file and an empty environment every setting has its documented default."""
    s = load_settings(environ={})
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.kafka.input_topic, s.kafka.output_topic, s.kafka.dlq_topic) == (
        "windows",
        "scores",
        "windows.dlq",
    )
    assert s.kafka.alert_topic == "alerts"
    assert s.kafka.group_id == "detector"
    assert (s.kafka.session_timeout_ms, s.kafka.heartbeat_interval_ms) == (45000, 3000)
    assert s.kafka.fetch_max_wait_ms == 50
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert s.kafka.sasl_mechanism is s.kafka.sasl_username is None
    assert s.kafka.sasl_password is s.kafka.ssl_cafile is None
    assert s.model.checkpoint is None
    assert (s.model.device, s.model.precision) == ("auto", "fp32")
    assert (s.batch.max_size, s.batch.max_wait_ms) == (256, 20)
    assert s.reload.poll_seconds == 5
    assert (s.alerts.raise_after, s.alerts.clear_after) == (3, 5)
    assert s.limits.max_message_bytes == 1048576
    assert (s.http.host, s.http.port) == ("0.0.0.0", 9108)
    assert s.log.format is None
    assert s.log.level == "info"
    assert s.log.resolved_format(isatty=True) == "console"
    assert s.log.resolved_format(isatty=False) == "json"


def test_environment_overrides_yaml_and_nested_sections_merge(tmp_path: Path) -> None:
    """An environment variable beats the same key in YAML while the file's other keys in that section stay."""
    config = write_yaml(tmp_path, "kafka:\n  input_topic: in\n  group_id: from-yaml\nbatch:\n  max_size: 8\n")
    s = load_settings(config, environ={"DETECTOR_KAFKA__GROUP_ID": "from-env", "DETECTOR_BATCH__MAX_WAIT_MS": "5"})
    assert s.kafka.input_topic == "in"
    assert s.kafka.group_id == "from-env"
    assert (s.batch.max_size, s.batch.max_wait_ms) == (8, 5)


def test_overrides_beat_the_environment() -> None:
    """Keyword overrides (the CLI's flags) win over the environment, key by key."""
    s = load_settings(
        environ={"DETECTOR_KAFKA__GROUP_ID": "env", "DETECTOR_KAFKA__INPUT_TOPIC": "env-in"},
        kafka={"group_id": "flag"},
    )
    assert (s.kafka.group_id, s.kafka.input_topic) == ("flag", "env-in")


def test_os_environ_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the process environment is the environment source."""
    monkeypatch.setenv("DETECTOR_HTTP__PORT", "9999")
    assert load_settings().http.port == 9999


def test_invalid_value_is_one_line_naming_the_field() -> None:
    """A value that does not validate raises ConfigError on one line with the dotted and env names."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"DETECTOR_KAFKA__SESSION_TIMEOUT_MS": "soon"})
    message = str(info.value)
    assert "\n" not in message
    assert "kafka.session_timeout_ms" in message
    assert "DETECTOR_KAFKA__SESSION_TIMEOUT_MS" in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("environ", "env_name"),
    [
        ({"DETECTOR_KAFKA__HEARTBEAT_INTERVAL_MS": "45000"}, "DETECTOR_KAFKA__HEARTBEAT_INTERVAL_MS"),
        ({"DETECTOR_MODEL__DEVICE": "tpu"}, "DETECTOR_MODEL__DEVICE"),
        ({"DETECTOR_MODEL__PRECISION": "int8"}, "DETECTOR_MODEL__PRECISION"),
        ({"DETECTOR_HTTP__PORT": "70000"}, "DETECTOR_HTTP__PORT"),
        ({"DETECTOR_BATCH__MAX_SIZE": "0"}, "DETECTOR_BATCH__MAX_SIZE"),
        ({"DETECTOR_KAFKA__SECURITY_PROTOCOL": "TLS"}, "DETECTOR_KAFKA__SECURITY_PROTOCOL"),
        ({"DETECTOR_LOG__LEVEL": "loud"}, "DETECTOR_LOG__LEVEL"),
    ],
)
def test_each_rule_names_its_field(environ: dict[str, str], env_name: str) -> None:
    """Range, choice and cross-field rules each fail with a one-line message naming the offending setting."""
    with pytest.raises(ConfigError, match=env_name) as info:
        load_settings(environ=environ)
    assert "\n" not in str(info.value)


def test_accepted_spellings() -> None:
    """Upper-case log levels, cuda:N devices and empty optional values are accepted."""
    s = load_settings(
        environ={
            "DETECTOR_LOG__LEVEL": "WARNING",
            "DETECTOR_MODEL__DEVICE": "cuda:1",
            "DETECTOR_KAFKA__SASL_MECHANISM": "",
            "DETECTOR_KAFKA__ALERT_TOPIC": "",
        }
    )
    assert (s.log.level, s.model.device) == ("warning", "cuda:1")
    assert s.kafka.sasl_mechanism is None
    assert s.kafka.alert_topic == ""


@pytest.mark.parametrize(
    ("text", "name"),
    [("kafka:\n  input_topik: in\n", "kafka.input_topik"), ("kafak:\n  input_topic: in\n", "kafak")],
)
def test_unknown_yaml_key_is_rejected(tmp_path: Path, text: str, name: str) -> None:
    """A misspelt key in the YAML file is an error naming the key, not silently ignored."""
    with pytest.raises(ConfigError, match=re.escape(f"unknown setting {name} ")) as info:
        load_settings(write_yaml(tmp_path, text), environ={})
    assert "\n" not in str(info.value)


def test_unknown_nested_env_key_is_rejected() -> None:
    """A misspelt DETECTOR_<SECTION>__<NAME> variable is an error naming it."""
    with pytest.raises(ConfigError, match="DETECTOR_KAFKA__GROUPID"):
        load_settings(environ={"DETECTOR_KAFKA__GROUPID": "g"})


def test_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist raises ConfigError naming it."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_settings(missing, environ={})


@pytest.mark.parametrize("text", ["kafka: [\n", "- a\n- b\n", "just a string\n"])
def test_malformed_yaml(tmp_path: Path, text: str) -> None:
    """YAML that does not parse, or is not a mapping, raises a one-line ConfigError."""
    with pytest.raises(ConfigError) as info:
        load_settings(write_yaml(tmp_path, text), environ={})
    assert "\n" not in str(info.value)


def test_empty_yaml_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    """An empty file, or a section whose keys are all commented out, leaves the defaults."""
    assert load_settings(write_yaml(tmp_path, ""), environ={}) == load_settings(environ={})
    s = load_settings(write_yaml(tmp_path, "kafka:\n  # group_id: x\nhttp:\n  port: 1\n"), environ={})
    assert (s.kafka.group_id, s.http.port) == ("detector", 1)


def test_settings_are_frozen() -> None:
    """Neither the tree nor a section can be assigned to after loading."""
    s = load_settings(environ={})
    with pytest.raises(ValidationError):
        s.kafka = s.kafka
    with pytest.raises(ValidationError):
        s.kafka.group_id = "other"


def test_secrets_are_masked() -> None:
    """masked() is JSON-safe and shows the SASL password as *** while other values stay readable."""
    s = load_settings(environ={"DETECTOR_KAFKA__SASL_PASSWORD": "hunter2", "DETECTOR_MODEL__CHECKPOINT": "m/x.ckpt"})
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "hunter2"
    shown = masked(s)
    assert shown["kafka"]["sasl_password"] == "***"
    assert shown["model"]["checkpoint"] == "m/x.ckpt"
    assert "hunter2" not in json.dumps(shown)
    assert "hunter2" not in repr(s)


@pytest.mark.parametrize("name", ["dev.yaml", "production.yaml"])
def test_shipped_configs_load(name: str) -> None:
    """Both configs in configs/ load and validate with an empty environment."""
    s = load_settings(CONFIGS / name, environ={})
    assert isinstance(s, Settings)
    assert s.model.checkpoint is not None


def test_dev_config_suits_the_embedded_broker() -> None:
    """The dev config points at the embedded broker with the short group timings it needs."""
    s = load_settings(CONFIGS / "dev.yaml", environ={})
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.kafka.session_timeout_ms, s.kafka.heartbeat_interval_ms) == (6000, 2000)
    assert s.kafka.fetch_max_wait_ms == 10  # the embedded broker answers an empty fetch late
    # the daemons the demo, the bench and the integration tests start get the same values
    started = load_settings(environ=settings_env({}, kafka=CLIENT_SETTINGS))
    assert started.kafka.model_dump(include=set(_CLIENT_FIELDS)) == s.kafka.model_dump(include=set(_CLIENT_FIELDS))
    assert s.model.checkpoint == Path("models/detector.ckpt")


def test_settings_env_replaces_every_detector_variable_of_its_base() -> None:
    """A child's environment: the base's DETECTOR_* variables (any case) dropped, the others kept, and the
    settings given as the variables that load back to them."""
    base = {"PATH": "/bin", "DETECTOR_KAFKA__GROUP_ID": "mine", "detector_log__level": "debug"}
    env = settings_env(base, kafka={"group_id": "g", "session_timeout_ms": 6000}, model={"checkpoint": Path("m")})
    assert env == {
        "PATH": "/bin",
        "DETECTOR_KAFKA__GROUP_ID": "g",
        "DETECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DETECTOR_MODEL__CHECKPOINT": "m",
    }
    s = load_settings(environ=env)
    assert (s.kafka.group_id, s.kafka.session_timeout_ms, s.model.checkpoint) == ("g", 6000, Path("m"))
    assert s.log.level == "info"


def test_production_config_holds_no_secret_and_takes_it_from_the_environment() -> None:
    """The production example sets SASL_SSL without a password; the environment supplies it."""
    assert "sasl_password:" not in (CONFIGS / "production.yaml").read_text()
    s = load_settings(CONFIGS / "production.yaml", environ={"DETECTOR_KAFKA__SASL_PASSWORD": "pw"})
    assert s.kafka.security_protocol == "SASL_SSL"
    assert s.kafka.sasl_mechanism is not None
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "pw"


def test_train_config_nested_env_override() -> None:
    """Training hyper-parameters nest two levels deep in the environment like any other setting."""
    s = load_settings(environ={"DETECTOR_TRAIN__NETWORK__HIDDEN_SIZE": "32", "DETECTOR_TRAIN__EPOCHS": "3"})
    assert s.train.network.hidden_size == 32
    assert s.train.epochs == 3
    assert s.train.network.num_layers == 2  # a default, untouched by the override


def secret_file(tmp_path: Path, content: bytes, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_a_file_secret_sets_the_setting_without_its_trailing_newline(tmp_path: Path) -> None:
    """DETECTOR_KAFKA__SASL_PASSWORD_FILE sets kafka.sasl_password to the file's text, trailing newline dropped."""
    s = load_settings(
        environ={
            "DETECTOR_KAFKA__SASL_PASSWORD_FILE": secret_file(tmp_path, b"s3cret pw\n"),
            "DETECTOR_KAFKA__SASL_USERNAME_FILE": secret_file(tmp_path, b"detector\r\n", "user"),
        }
    )
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "s3cret pw"
    assert s.kafka.sasl_username == "detector"
    assert "s3cret" not in json.dumps(masked(s))


def test_a_file_secret_beats_yaml_like_the_environment(tmp_path: Path) -> None:
    """A _FILE secret ranks with the environment: it wins over the YAML file's value."""
    config = write_yaml(
        tmp_path,
        "kafka:\n  security_protocol: SSL\n  ssl_password: from-yaml\n  ssl_certfile: c.pem\n  ssl_keyfile: k.pem\n",
    )
    s = load_settings(config, environ={"DETECTOR_KAFKA__SSL_PASSWORD_FILE": secret_file(tmp_path, b"from-file")})
    assert s.kafka.ssl_password is not None
    assert s.kafka.ssl_password.get_secret_value() == "from-file"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "No such file"), (b"", "is empty"), (b"\xff\xfe", "not UTF-8"), (b"x" * (64 * 1024 + 1), "larger than")],
)
def test_an_unusable_secret_file_is_one_line_naming_the_variable(tmp_path: Path, content: bytes | None, reason: str):
    """A missing, empty, non-UTF-8 or oversized secret file is a one-line ConfigError naming the _FILE variable."""
    path = str(tmp_path / "missing") if content is None else secret_file(tmp_path, content)
    with pytest.raises(ConfigError, match="DETECTOR_KAFKA__SASL_PASSWORD_FILE") as info:
        load_settings(environ={"DETECTOR_KAFKA__SASL_PASSWORD_FILE": path})
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_a_huge_or_endless_secret_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """A 1 GiB file is refused by its first 64 KiB; /dev/zero, a directory and a FIFO with no writer are
    refused at once as not regular files, never read or waited on."""
    huge = tmp_path / "huge"
    with huge.open("wb") as file:
        file.truncate(1 << 30)  # sparse: costs no disk
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [(huge, "larger than 65536 bytes"), ("/dev/zero", "not a regular file")]
    cases += [(tmp_path, "not a regular file"), (fifo, "not a regular file")]
    for path, reason in cases:
        with pytest.raises(ConfigError, match=f"DETECTOR_KAFKA__SASL_PASSWORD_FILE={path}.*{reason}"):
            load_settings(environ={"DETECTOR_KAFKA__SASL_PASSWORD_FILE": str(path)})


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    """Setting both DETECTOR_X and DETECTOR_X_FILE is a ConfigError naming both."""
    with pytest.raises(ConfigError, match="DETECTOR_KAFKA__SASL_PASSWORD and DETECTOR_KAFKA__SASL_PASSWORD_FILE"):
        load_settings(
            environ={
                "DETECTOR_KAFKA__SASL_PASSWORD": "pw",
                "DETECTOR_KAFKA__SASL_PASSWORD_FILE": secret_file(tmp_path, b"pw"),
            }
        )


def test_file_form_is_only_for_secrets(tmp_path: Path) -> None:
    """A _FILE variable of a setting that is not a secret is an unknown setting, not read."""
    with pytest.raises(ConfigError, match="DETECTOR_KAFKA__GROUP_ID_FILE"):
        load_settings(environ={"DETECTOR_KAFKA__GROUP_ID_FILE": secret_file(tmp_path, b"g")})


def test_mutual_tls_settings_load_and_the_key_password_is_masked() -> None:
    """Client certificate, key and key password load with SSL; the password is a masked secret."""
    s = load_settings(
        environ={
            "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SSL",
            "DETECTOR_KAFKA__SSL_CERTFILE": "/tls/client.pem",
            "DETECTOR_KAFKA__SSL_KEYFILE": "/tls/client.key",
            "DETECTOR_KAFKA__SSL_PASSWORD": "keypw",
        }
    )
    assert (s.kafka.ssl_certfile, s.kafka.ssl_keyfile) == ("/tls/client.pem", "/tls/client.key")
    assert masked(s)["kafka"]["ssl_password"] == "***"
    assert "keypw" not in repr(s)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DETECTOR_KAFKA__SSL_CERTFILE": "c.pem"}, r"DETECTOR_KAFKA__SSL_KEYFILE\): required with kafka.ssl_certfile"),
        ({"DETECTOR_KAFKA__SSL_KEYFILE": "k.pem"}, r"DETECTOR_KAFKA__SSL_KEYFILE\): set without kafka.ssl_certfile"),
        ({"DETECTOR_KAFKA__SSL_PASSWORD": "pw"}, r"DETECTOR_KAFKA__SSL_PASSWORD\): set without kafka.ssl_keyfile"),
    ],
)
def test_certificate_key_and_password_come_together(environ: dict[str, str], message: str) -> None:
    """A client certificate without its key, a key without its certificate, or a key password alone is refused."""
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(environ={"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SSL", **environ})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("environ", "env_name"),
    [
        ({"DETECTOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512"}, "DETECTOR_KAFKA__SASL_MECHANISM"),
        (
            {"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SSL", "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN"},
            "DETECTOR_KAFKA__SASL_MECHANISM",
        ),
        ({"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "DETECTOR_KAFKA__SASL_MECHANISM"),
        ({"DETECTOR_KAFKA__SSL_CAFILE": "ca.pem"}, "DETECTOR_KAFKA__SSL_CAFILE"),
        (
            {
                "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN",
                "DETECTOR_KAFKA__SSL_CAFILE": "ca.pem",
            },
            "DETECTOR_KAFKA__SSL_CAFILE",
        ),
    ],
)
def test_security_settings_the_protocol_would_ignore_are_refused(environ: dict[str, str], env_name: str) -> None:
    """A SASL mechanism without a SASL_* protocol, a SASL_* protocol without a mechanism, or a TLS setting
    without a TLS protocol is refused, naming the setting, instead of connecting with less security."""
    with pytest.raises(ConfigError, match=env_name) as info:
        load_settings(environ=environ)
    assert "\n" not in str(info.value)


def test_sasl_plain_over_plaintext_warns_and_other_combinations_do_not() -> None:
    """security_warnings flags PLAIN over SASL_PLAINTEXT (password in clear) and nothing in the shipped configs."""
    plain = load_settings(
        environ={"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN"}
    )
    (warning,) = security_warnings(plain)
    assert "PLAIN" in warning
    assert "SASL_SSL" in warning
    over_tls = load_settings(
        environ={"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN"}
    )
    assert security_warnings(over_tls) == []
    for name in ("dev.yaml", "production.yaml"):
        assert security_warnings(load_settings(CONFIGS / name, environ={})) == []
