"""client_config: the settings that reach kafka-python, and the security mistakes refused before connecting."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.errors import ConfigError
from detector.kafka_clients import client_config
from detector.settings import Settings, load_settings

# A self-signed EC certificate (CN=detector-test, valid to 2126), its key in clear and encrypted with
# "keypw", and the key of another certificate.
CERT = """-----BEGIN CERTIFICATE-----
MIIBhjCCAS2gAwIBAgIURgt9KSimNKJ+reoddGbhnhanmkswCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNZGV0ZWN0b3ItdGVzdDAgFw0yNjEyMDUwMzA3MTJaGA8yMTI2
MTExMTAzMDcxMlowGDEWMBQGA1UEAwwNZGV0ZWN0b3ItdGVzdDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABFHQ1zfnfvl+bHwK8jxloTFmuTh3VLcwORolhkulXQ8j
X/Q0eTuualH0oVUPT8RF+0BMmqipSBgdHpONdQDGJxyjUzBRMB0GA1UdDgQWBBRT
BNphm95rPkks//i5Lwz3hIbaPTAfBgNVHSMEGDAWgBRTBNphm95rPkks//i5Lwz3
hIbaPTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIBI8A2+xZ7uh
RWYyb+IAqjQL5bPnCnADygcK+CiySXXeAiBJWXrcrHrLMPtCUqx4e6vUummgi55p
DyoYW8AU9SQNSg==
-----END CERTIFICATE-----
"""
KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg28cIwbJe13032p3x
mH217ljjLv4mDIHiYjHEdtGGR56hRANCAARR0Nc35375fmx8CvI8ZaExZrk4d1S3
MDkaJYZLpV0PI1/0NHk7rmpR9KFVD0/ERftATJqoqUgYHR6TjXUAxicc
-----END PRIVATE KEY-----
"""
ENCRYPTED_KEY = """-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAgekOJ3/nqNKAICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEC8pNHuwNLB3Ai0lElYBpCYEgZA5
xx8wnQOJ8O/AUu92920a/hbtXLTiURuvJ8fHTgPV8nLiE2Ku8ob1Xlgx7goU4HH9
RgBP6vWwKDwB9Odx5VXNdKW8jd/DdbjSrvwkx3xnZTk/byQPMWq9JCjI6gtyW/mU
yVU6Q7vA8KL4CJ/pxCD9z1iizKwzYzEOE9RFYaD25+DND38adQicLSfppQWMmyY=
-----END ENCRYPTED PRIVATE KEY-----
"""
OTHER_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqaFf+Y/XoEc0U0Cw
ZBXDBW2P/P8n+aRZMqeCid67Y6mhRANCAASaWnWSwU2XfCjYHF+l69E1UM1JfxWW
zKzaTEza3nZfIGGIDlUYKmEEC1pmpmk71rjayTHwQ3mJTrdsIwnCO5S0
-----END PRIVATE KEY-----
"""


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    """A directory with ca.pem (the certificate, as its own CA), cert.pem and the three keys."""
    for name, text in [("ca.pem", CERT), ("cert.pem", CERT), ("key.pem", KEY), ("enc.pem", ENCRYPTED_KEY)]:
        (tmp_path / name).write_text(text)
    (tmp_path / "other.pem").write_text(OTHER_KEY)
    return tmp_path


def ssl_settings(**kafka: str) -> Settings:
    env = {f"DETECTOR_KAFKA__{name.upper()}": value for name, value in kafka.items()}
    return load_settings(environ={"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SSL", **env})


def test_mutual_tls_files_and_key_password_reach_the_client_config(tls: Path) -> None:
    """CA, client certificate, key and key password are passed to kafka-python under its own names."""
    config = client_config(
        ssl_settings(
            ssl_cafile=str(tls / "ca.pem"),
            ssl_certfile=str(tls / "cert.pem"),
            ssl_keyfile=str(tls / "enc.pem"),
            ssl_password="keypw",
        )
    )
    assert config["security_protocol"] == "SSL"
    assert config["ssl_cafile"] == str(tls / "ca.pem")
    assert config["ssl_certfile"] == str(tls / "cert.pem")
    assert config["ssl_keyfile"] == str(tls / "enc.pem")
    assert config["ssl_password"] == "keypw"


def test_plaintext_config_carries_no_security_keys() -> None:
    """With the defaults no SASL or TLS key is passed, so kafka-python's own defaults apply."""
    config = client_config(load_settings(environ={}))
    assert config["security_protocol"] == "PLAINTEXT"
    assert not [key for key in config if key.startswith(("ssl_", "sasl_"))]


def test_sasl_credentials_reach_the_client_config(tmp_path: Path) -> None:
    """SASL mechanism, user and password (here from a secret file) reach kafka-python's sasl_plain_* keys."""
    (tmp_path / "pw").write_text("hunter2\n")
    settings = load_settings(
        environ={
            "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "DETECTOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "DETECTOR_KAFKA__SASL_USERNAME": "detector",
            "DETECTOR_KAFKA__SASL_PASSWORD_FILE": str(tmp_path / "pw"),
        }
    )
    config = client_config(settings)
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == ("SCRAM-SHA-512", "detector")
    assert config["sasl_plain_password"] == "hunter2"


@pytest.mark.parametrize("missing", ["DETECTOR_KAFKA__SASL_USERNAME", "DETECTOR_KAFKA__SASL_PASSWORD"])
def test_sasl_without_user_or_password_is_refused_before_connecting(missing: str) -> None:
    """A SASL mechanism without its user or password is a ConfigError naming the variable and its _FILE form."""
    environ = {
        "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN",
        "DETECTOR_KAFKA__SASL_USERNAME": "detector",
        "DETECTOR_KAFKA__SASL_PASSWORD": "pw",
    }
    del environ[missing]
    with pytest.raises(ConfigError, match=f"{missing} or {missing}_FILE"):
        client_config(load_settings(environ=environ))


@pytest.mark.parametrize("setting", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_a_missing_tls_file_is_a_config_error_naming_the_setting(tls: Path, setting: str) -> None:
    """A CA, certificate or key file that does not exist fails at once naming its setting, not as a broker
    that cannot be reached."""
    files = {"ssl_cafile": "ca.pem", "ssl_certfile": "cert.pem", "ssl_keyfile": "key.pem"}
    paths = {name: str(tls / file) for name, file in files.items()}
    paths[setting] = str(tls / "absent.pem")
    with pytest.raises(ConfigError, match=f"kafka.{setting} \\(DETECTOR_KAFKA__{setting.upper()}\\)") as info:
        client_config(ssl_settings(**paths))
    assert "absent.pem" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"ssl_cafile": "key.pem"}, "kafka.ssl_cafile .*no usable PEM CA certificate"),
        ({"ssl_certfile": "cert.pem", "ssl_keyfile": "other.pem"}, "cannot load .*cert.pem"),
        ({"ssl_certfile": "cert.pem", "ssl_keyfile": "enc.pem"}, "cannot load .*cert.pem"),
        ({"ssl_certfile": "cert.pem", "ssl_keyfile": "enc.pem", "ssl_password": "wrong"}, "cannot load .*cert.pem"),
    ],
)
def test_unusable_tls_material_is_refused_before_connecting(tls: Path, kafka: dict[str, str], message: str) -> None:
    """A CA file without a certificate, a key of another certificate, or an encrypted key without its right
    password is a one-line ConfigError (never a prompt on the terminal)."""
    paths = {name: value if name == "ssl_password" else str(tls / value) for name, value in kafka.items()}
    with pytest.raises(ConfigError, match=message) as info:
        client_config(ssl_settings(**paths))
    assert "\n" not in str(info.value)
    assert "wrong" not in str(info.value)


def test_one_pem_holding_certificate_and_key_may_be_named_twice(tls: Path) -> None:
    """A combined PEM file serves as both ssl_certfile and ssl_keyfile."""
    (tls / "both.pem").write_text(CERT + KEY)
    both = str(tls / "both.pem")
    config = client_config(ssl_settings(ssl_certfile=both, ssl_keyfile=both))
    assert config["ssl_certfile"] == config["ssl_keyfile"] == both
