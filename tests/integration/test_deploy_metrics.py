"""The Grafana dashboard and the alert rules against a running `detector serve`: every metric family they
query is in the daemon's /metrics scrape (and in METRIC_NAMES), with samples once windows flow, and the
probe paths the deploy files use answer 200 on the port set by DETECTOR_HTTP__PORT."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from detector.broker import EmbeddedBroker
from detector.serve.metrics import METRIC_NAMES
from tests.integration.conftest import F, T, free_port
from tests.integration.kafka_helpers import Daemon, Topics, produce
from tests.sample_windows import encode, window
from tests.test_deploy import alert_rule_queries, dashboard_queries, families_in

WINDOWS = 40


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def exposed_families(scrape: str) -> set[str]:
    """Family names as the scrape's `# TYPE` lines give them (counters with `_total`)."""
    return set(re.findall(r"^# TYPE (\S+) \S+$", scrape, re.MULTILINE))


def sample(scrape: str, name: str) -> float:
    """The sum of the samples called ``name`` (any labels); 0 when there is none."""
    found = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", scrape, re.MULTILINE)
    return sum(float(v) for v in found)


def test_every_metric_the_dashboard_queries_is_exported_by_a_running_daemon(
    broker: EmbeddedBroker, topics: Topics, start_daemon
):
    """40 windows and one bad message through a daemon on a chosen port: its scrape has every family the
    dashboard and the alert rules query, with samples for throughput, DLQ reason, lag, latency, batch
    size and model version; /healthz and /readyz answer 200."""
    port = free_port()
    daemon: Daemon = start_daemon(DETECTOR_HTTP__PORT=str(port))
    url = daemon.url()
    assert url.endswith(f":{port}"), url
    daemon.wait_for_log("partitions assigned", timeout_s=90)

    records = [(b"deploy", *encode(window("deploy", i, T, F))) for i in range(WINDOWS)]
    records.append((b"deploy", b"{not json", []))
    produce(broker.bootstrap_servers, topics.input, records)

    deadline = time.monotonic() + 120
    scrape = ""
    while time.monotonic() < deadline:
        status, scrape = get(url + "/metrics")
        assert status == 200
        if (
            sample(scrape, "detector_windows_scored_total") >= WINDOWS
            and sample(scrape, "detector_dead_letters_total") >= 1
            and "detector_consumer_lag_messages{" in scrape
        ):
            break
        assert daemon.alive, daemon.tail()
        time.sleep(0.5)
    else:
        raise AssertionError(f"the scrape never showed {WINDOWS} windows scored, a dead letter and lag:\n{scrape}")

    exposed = exposed_families(scrape)
    queried = families_in(dashboard_queries()) | families_in(alert_rule_queries())
    assert queried <= exposed, f"queried but not exported: {sorted(queried - exposed)}"
    assert queried <= set(METRIC_NAMES), f"not in METRIC_NAMES: {sorted(queried - set(METRIC_NAMES))}"
    assert exposed >= set(METRIC_NAMES), f"METRIC_NAMES not exported: {sorted(set(METRIC_NAMES) - exposed)}"

    assert re.search(r'^detector_dead_letters_total\{reason="bad_json"\} 1\.0$', scrape, re.MULTILINE)
    assert re.search(r'^detector_model_info\{version="[0-9a-f]+"\} 1\.0$', scrape, re.MULTILINE)
    assert sample(scrape, "detector_windows_consumed_total") == WINDOWS + 1
    assert sample(scrape, "detector_end_to_end_latency_seconds_count") == WINDOWS
    assert sample(scrape, "detector_batch_size_messages_count") >= 1
    lag = [line for line in scrape.splitlines() if line.startswith("detector_consumer_lag_messages{")]
    assert lag
    assert all(f'topic="{topics.input}"' in line and 'partition="' in line for line in lag), lag

    assert get(url + "/healthz")[0] == 200
    assert get(url + "/readyz")[0] == 200
    assert daemon.terminate(timeout_s=15) == 0
