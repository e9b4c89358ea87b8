"""The whole serving path on the embedded broker, stage by stage, in one run (issue 7).

Run: `make bench` (or `.venv/bin/python bench/e2e.py [--windows N] [--quick]`). It starts the embedded
broker, fills input topics with the same generated windows (F=4, T=64; JSON and the f32 codec), and measures
with the daemon's own settings and code (windows/s unless stated; median of 3 where cheap):

  consume_only       a consumer (make_consumer) draining the JSON input topic, decoding nothing
  decode_only(_f32)  decode + validate those messages (serve.decode.decode_message)
  model_only         the scorer as the daemon builds it, on in-memory batches of batch.max_size
  produce_only       a producer (make_producer) writing output-sized records, until all are acknowledged
  e2e(_f32)          `detector serve` draining the pre-filled topic: first to last output record
  per_message        the naive loop: consume one, score one, produce one (acknowledged), commit one
  passthrough_p50/p99_ms, e2e_p50/p99_ms
                     input paced at half the e2e rate; latency from the input record's timestamp to its
                     output record being readable by a consumer (after the broker acknowledged it);
                     passthrough and daemon alternated, each run on a fresh broker, median of 3
  model_only_bf16, e2e_bf16
                     the same with model.cpu_bf16=true, where the CPU has native bfloat16 (else left out)
  bf16_probability_max_diff, bf16_flag_changes
                     the bundled demo model (detector/assets/demo.ckpt) on 2,000 generated windows, bf16
                     against fp32: the largest probability difference and the windows whose flag differs
                     (native bfloat16 only)
  floor_p50/p99_ms   the daemon's latency at the same rate with a near-free model (hidden 8, one layer, one
                     direction) and batch.max_wait_ms=1: what the serving path costs beside the passthrough
                     when neither the model nor the batch wait takes any time
  swap_dip           largest drop of 1-second throughput while a new checkpoint is swapped in (median of 3)
  rss_mb             the daemon's peak RSS (max over its runs)

and the ratios e2e_over_bound, e2e_over_serial, e2e_over_per_message, p99_over_passthrough,
floor_p99_over_passthrough, e2e_f32_over_e2e (and model_only_bf16_over_fp32, e2e_bf16_over_fp32).

Every target it checks is in TARGETS below; each is printed as a line `target NAME: VALUE OP LIMIT: met` (or
NOT MET, or not measured) after the table (bench/targets.py). The table goes to stdout and
bench/out/results.md; the figures and the targets (under "targets") to bench/out/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import (
    PARTITIONS,
    Child,
    GroupWatch,
    Observer,
    PacedProducer,
    create_topics,
    daemon_env,
    default_checkpoint,
    f32_records,
    fill,
    json_records,
    median3,
    read_all,
    serve,
    window_id_of,
    windows,
)
from kafka import TopicPartition
from targets import Target, number, report, verdict

from detector.broker import EmbeddedBroker
from detector.codec import decode_json, encode_json
from detector.model.config import NetworkConfig
from detector.scoring import cpu_has_bf16
from detector.serve.decode import decode_message
from detector.serve.messages import Message
from detector.settings import Settings, load_settings

OUT = Path(__file__).parent / "out"
SWAP_SECONDS = 14  # how long the swap run drains at the measured e2e_f32 rate; the swap comes ~5 s in
F, T = 4, 64
# The serving path with (almost) nothing to do: a model of ~1% of the default's work, batches closed after 1 ms.
FLOOR_NETWORK = NetworkConfig(hidden_size=8, num_layers=1, bidirectional=False)
FLOOR_ENV = {"DETECTOR_BATCH__MAX_WAIT_MS": "1"}
BF16 = cpu_has_bf16()  # model.cpu_bf16=true runs in bf16 on this CPU: measured beside fp32 (model_only, e2e)
BF16_WINDOWS = 2000  # windows of the bf16 / fp32 agreement check (demo model)

# Every target this bench checks, by figure; where each is stated. A figure stated as "~N" is checked with 10% slack
# on N (~1.4x: >= 1.26; ~0.03: <= 0.033); a bound stated as such is checked as stated.
_ISSUE = "bench/RESULTS.md, The serving path (table)"
_PRECISION = "README.md, Serving (Precision)"
TARGETS = {
    "e2e_over_serial": Target(">=", 1.0, "", _ISSUE),
    "e2e_over_per_message": Target(">=", 20.0, "", _ISSUE),
    "p99_over_passthrough": Target("<=", 2.0, "", _ISSUE),
    "floor_p99_over_passthrough": Target("<=", 2.0, "", "bench/RESULTS.md, floor (within 2x)"),
    "e2e_f32_over_e2e": Target(">=", 1.5, "", _ISSUE + " (e2e_f32 >= 1.5 x e2e)"),
    "swap_dip": Target("<=", 0.10, "", _ISSUE),
    "rss_mb": Target("<=", 600.0, "MB", _ISSUE),
    "model_only_bf16_over_fp32": Target(">=", 1.26, "", _PRECISION + " (~1.4x faster)"),
    "e2e_bf16_over_fp32": Target(">=", 1.26, "", _PRECISION + " (~1.4x faster)"),
    "bf16_probability_max_diff": Target("<=", 0.033, "", _PRECISION + " (within ~0.03 of fp32)"),
    "bf16_flag_changes": Target("<=", 0.0, "windows", "bench/RESULTS.md, bf16 (no flag changed)"),
}
NOT_MEASURED = "no native bfloat16 on this CPU: bf16 figures left out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(env: dict[str, str]) -> Settings:
    return load_settings(environ=env)


# -- stage by stage -------------------------------------------------------------------------------------


def consume_only(settings: Settings, topic: str, n: int) -> tuple[float, list[Message]]:
    """Drain ``n`` records with the daemon's consumer settings (partitions assigned: no group join)."""
    from detector.kafka_clients import make_consumer

    consumer = make_consumer(settings)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list[Any] = []
    started = None
    try:
        while len(records) < n:
            batches = consumer.poll(timeout_ms=1000, max_records=settings.batch.max_size)
            if started is None and batches:
                started = time.perf_counter()
            for batch in batches.values():
                records.extend(batch)
        seconds = time.perf_counter() - (started or 0.0)
    finally:
        consumer.close(autocommit=False)
    messages = [Message(r.topic, r.partition, r.offset, r.key, r.value, r.headers or (), r.timestamp) for r in records]
    return len(records) / seconds, messages


def decode_only(messages: list[Message], settings: Settings) -> float:
    started = time.perf_counter()
    for m in messages:
        decode_message(m, (T, F), settings.limits.max_message_bytes)
    return len(messages) / (time.perf_counter() - started)


def model_only(settings: Settings, values: np.ndarray, seconds: float = 3.0) -> float:
    """The scorer exactly as the daemon loads it (threads included), on batches of batch.max_size."""
    from detector.serve.daemon import load_scorer

    scorer = load_scorer(settings)
    batch = settings.batch.max_size
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for lo in range(0, len(values) - batch + 1, batch):
            scorer.score(values[lo : lo + batch])
            done += batch
    return done / (time.perf_counter() - started)


def bf16_agreement(n: int = BF16_WINDOWS) -> tuple[float, int]:
    """The bundled demo model (trained, calibrated) scores ``n`` generated windows in fp32 and with
    model.cpu_bf16: the largest probability difference and how many windows' flags differ."""
    from detector.demo.model import bundled_path
    from detector.model import checkpoint
    from detector.scoring import Scorer

    ckpt = checkpoint.load(bundled_path())
    lines = windows(n, ckpt.n_features, ckpt.window_length, seed=11)
    values = np.stack([np.asarray(ln["values"], dtype=np.float32) for ln in lines])
    fp32 = Scorer(ckpt).score(values)
    bf16 = Scorer(ckpt, cpu_bf16=True).score(values)
    return float(np.abs(bf16.probability - fp32.probability).max()), int((bf16.flag != fp32.flag).sum())


def produce_only(settings: Settings, topic: str, values: list[bytes], keys: list[bytes]) -> float:
    """Send output-sized records with the daemon's producer settings until every one is acknowledged."""
    from detector.kafka_clients import make_producer

    producer = make_producer(settings)
    headers = [("content-type", b"application/json")]
    try:
        producer.send(topic, key=keys[0], value=values[0], headers=headers).get(30)  # metadata, connection
        started = time.perf_counter()
        futures = [producer.send(topic, key=k, value=v, headers=headers) for k, v in zip(keys, values, strict=True)]
        producer.flush(120)
        seconds = time.perf_counter() - started
        assert all(f.succeeded() for f in futures)
    finally:
        producer.close(10)
    return len(values) / seconds


def per_message(settings: Settings, topic: str, out_topic: str, seconds: float = 4.0) -> float:
    """The naive loop, one message at a time, each output acknowledged and each offset committed."""
    from kafka import OffsetAndMetadata

    from detector.kafka_clients import make_consumer, make_producer
    from detector.serve.daemon import load_scorer

    scorer = load_scorer(settings)
    consumer = make_consumer(settings)
    producer = make_producer(settings)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    done, started = 0, None
    try:
        while started is None or time.perf_counter() - started < seconds:
            for tp, batch in consumer.poll(timeout_ms=1000, max_records=1).items():
                started = started or time.perf_counter()
                for r in batch:
                    window = decode_json(r.value, scorer.shape)
                    scores = scorer.score(window.values[None])
                    now = time.time_ns() // 1_000_000
                    wid = window.window_id if window.window_id is not None else f"{tp.topic}/{r.offset}"
                    record = scorer.records([window], scores, [wid], [now], [float(now - r.timestamp)])[0]
                    producer.send(out_topic, key=r.key, value=encode_json(record)).get(30)
                    consumer.commit({tp: OffsetAndMetadata(r.offset + 1, "", -1)})
                    done += 1
        elapsed = time.perf_counter() - (started or 0.0)
    finally:
        consumer.close(autocommit=False)
        producer.close(10)
    return done / elapsed


# -- the daemon ---------------------------------------------------------------------------------------


def drain(bootstrap: str, ckpt: Path, topic: str, n: int, run: str, logs: Path, **extra: str) -> tuple[float, Child]:
    """`detector serve` drains ``n`` pre-filled windows; windows/s from its first to its last output record
    (CreateTime), once every input offset is committed, i.e. every output acknowledged."""
    create_topics(bootstrap, [f"{run}.out", f"{run}.dlq", f"{run}.alerts"])
    daemon = serve(daemon_env(bootstrap, ckpt, topic, run, **extra), logs / f"{run}.log")
    watch = GroupWatch(bootstrap, f"{run}.group")
    deadline = time.monotonic() + 300
    try:
        while watch.committed() < n:
            if daemon.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: the daemon of {run} did not drain its input:\n{daemon.tail()}")
            time.sleep(0.5)
    finally:
        daemon.stop()
        watch.close()
    stamps = sorted(r.timestamp for r in read_all(bootstrap, f"{run}.out", n))
    first, last = stamps[0], stamps[-1]
    after_first = sum(1 for s in stamps if s > first)
    return after_first / max(1e-3, (last - first) / 1000), daemon


def latency(bootstrap: str, run: str, child: Child, records: list[Any], ids: list[str], rate: float) -> dict:
    """Pace ``records`` into ``run``.in at ``rate``/s while ``child`` forwards or scores them to ``run``.out."""
    observer = Observer(bootstrap, f"{run}.out", window_id_of)
    observer.start()
    producer = PacedProducer(bootstrap, f"{run}.in", records, ids, rate)
    producer.start()
    producer.done.wait(600)
    deadline = time.monotonic() + 30
    while len(observer.seen_ms) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    observer.stopping.set()
    observer.join(5)
    child.stop()
    warm_ms = producer.started_ms + 2000  # the first 2 s: connections, first fetches, caches
    seen, sent = observer.seen_ms, producer.sent_ms
    lat = [seen[i] - sent[i] for i in ids if i in seen and sent[i] > warm_ms]
    return {
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "n": len(lat),
        "missing": len(ids) - len(seen),
    }


def latency_run(
    kind: str, ckpt: Path, records: list[Any], ids: list[str], rate: float, logs: Path, i: int, **extra: str
) -> tuple[dict, Child]:
    """One latency run of the passthrough or the daemon, on a fresh broker: the embedded broker's latency
    grows with what it holds (in one broker, three daemon runs in a row went from p99 56 to 106 to 161 ms),
    so a run after the throughput runs, or after the other kind's run, would be measured on a slower one."""
    with EmbeddedBroker("127.0.0.1", free_port(), output=logs / f"broker-{kind}-{i}.log") as broker:
        bs = broker.bootstrap_servers
        run = f"{kind}{i}"
        create_topics(bs, [f"{run}.in", f"{run}.out", f"{run}.dlq", f"{run}.alerts"])
        env = daemon_env(bs, ckpt, f"{run}.in", run, **extra)
        if kind == "pass":
            child = Child([sys.executable, __file__, "--passthrough"], env, logs / f"passthrough-{i}.log")
        else:
            child = serve(env, logs / f"latency-{kind}-{i}.log")
        child.wait_for("partitions assigned")
        return latency(bs, run, child, records, ids, rate), child


def passthrough_main() -> None:
    """Child mode: forward every input record to the output topic, no model, with the daemon's clients and
    its loop shape (poll -> send -> flush -> commit)."""
    from kafka import OffsetAndMetadata

    from detector.kafka_clients import make_consumer, make_producer

    settings = load_settings(environ=os.environ)
    consumer, producer = make_consumer(settings), make_producer(settings)
    consumer.subscribe([settings.kafka.input_topic])
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    import signal

    signal.signal(signal.SIGTERM, on_term)
    assigned = False
    while not stop:
        batches = consumer.poll(timeout_ms=250, max_records=settings.batch.max_size)
        if not assigned and consumer.assignment():
            print(json.dumps({"event": "partitions assigned"}), flush=True)
            assigned = True
        if not batches:
            continue
        offsets = {}
        for tp, batch in batches.items():
            for r in batch:
                producer.send(settings.kafka.output_topic, key=r.key, value=r.value, headers=r.headers or [])
            offsets[tp] = OffsetAndMetadata(batch[-1].offset + 1, "", -1)
        producer.flush(30)
        consumer.commit(offsets)
    consumer.close(autocommit=False)
    producer.close(5)


# -- the run ------------------------------------------------------------------------------------------


def swap_dip(bootstrap: str, ckpt: Path, topic: str, n: int, logs: Path, i: int = 0) -> tuple[float, dict[str, Any]]:
    """Drain ``n`` windows; a few seconds in, atomically replace the checkpoint with a new one. The dip is
    1 - (lowest 1-second output count from the second of the replace to the second after the new model took
    over) / (median 1-second count of the other seconds, before and after). The same statistic over the
    seconds away from the swap is reported beside it: the machine's own noise."""
    run = f"swap{i}"
    create_topics(bootstrap, [f"{run}.out", f"{run}.dlq", f"{run}.alerts"])
    live = logs / f"{run}.ckpt"
    live.write_bytes(ckpt.read_bytes())
    # Built before the daemon starts: the bench's own work must not load the machine during the swap.
    fresh = default_checkpoint(logs / f"{run}.next.ckpt", F, T, seed=1)
    env = daemon_env(bootstrap, live, topic, run, DETECTOR_RELOAD__POLL_SECONDS="0.5")
    daemon = serve(env, logs / f"{run}.log")
    watch = GroupWatch(bootstrap, f"{run}.group")
    try:
        while watch.committed() < n // 5:
            if daemon.process.poll() is not None:
                raise SystemExit(f"bench: the daemon of the swap run exited:\n{daemon.tail()}")
            time.sleep(0.1)
        time.sleep(2.5)
        if watch.committed() >= n:
            raise SystemExit(
                f"bench: the swap run drained its {n} windows before the swap; it needs a longer input topic"
            )
        os.replace(fresh, live)
        replaced_ms = time.time_ns() // 1_000_000
        while watch.committed() < n:
            if daemon.process.poll() is not None:
                raise SystemExit(f"bench: the daemon of the swap run exited:\n{daemon.tail()}")
            time.sleep(0.25)
    finally:
        daemon.stop()
        watch.close()
    outs = read_all(bootstrap, f"{run}.out", n)
    new_version = _version(live)
    by_record = [(r.timestamp, json.loads(r.value)["model_version"]) for r in outs]
    versions = {v for _, v in by_record}
    swapped = [ts for ts, v in by_record if v == new_version]
    took_over_ms = min(swapped) if swapped else None
    stamps = np.array(sorted(r.timestamp for r in outs))
    lo = stamps[0]
    counts = np.bincount(((stamps - lo) // 1000).astype(int))[1:-1]  # drop the partial first and last second
    t_replace = (replaced_ms - lo) // 1000 - 1
    t_end = ((took_over_ms or replaced_ms) - lo) // 1000 - 1 + 1
    window = np.zeros(len(counts), dtype=bool)
    window[max(0, t_replace) : t_end + 1] = True
    baseline = float(np.median(counts[~window]))  # the steady rate around the swap, before and after it
    dip = max(0.0, 1.0 - float(counts[window].min()) / baseline)
    # The same statistic away from the swap: how large a "dip" the machine's own noise makes.
    noise = max(0.0, 1.0 - float(counts[~window].min()) / baseline)
    detail = {
        "per_second": counts.tolist(),
        "replace_second": int(t_replace),
        "took_over_second": None if took_over_ms is None else int((took_over_ms - lo) // 1000 - 1),
        "versions_seen": len(versions),
        "baseline_per_second": baseline,
        "largest_dip_away_from_swap": round(noise, 3),
    }
    return dip, detail


def _version(path: Path) -> str:
    from detector.model.checkpoint import content_version

    return content_version(path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=40_000, help="windows in each pre-filled input topic")
    parser.add_argument("--quick", action="store_true", help="smaller topics, one run per figure (a smoke test)")
    parser.add_argument("--passthrough", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.passthrough:
        passthrough_main()
        return
    n = 6000 if args.quick else args.windows
    runs = 1 if args.quick else 3
    began = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "logs"
    logs.mkdir(exist_ok=True)
    ckpt = default_checkpoint(OUT / "bench.ckpt", F, T)
    lines = windows(n, F, T)
    print(f"bench: {n} windows F={F} T={T}, {PARTITIONS} partitions; default model; {os.cpu_count()} cores")

    with EmbeddedBroker("127.0.0.1", free_port(), output=logs / "broker.log") as broker:
        bs = broker.bootstrap_servers
        create_topics(bs, ["in.json", "in.f32", "produce.out", "naive.out"])
        fill(bs, "in.json", json_records(lines))
        fill(bs, "in.f32", f32_records(lines))
        print(f"bench: topics filled in {time.monotonic() - began:.0f} s")
        env = daemon_env(bs, ckpt, "in.json", "stages")
        settings = settings_for(env)
        r: dict[str, Any] = {}
        runs_detail: dict[str, Any] = {}

        consumed: list[Message] = []

        def consume() -> float:
            rate, messages = consume_only(settings, "in.json", n)
            consumed[:] = messages
            return rate

        r["consume_only"], runs_detail["consume_only"] = median3(consume, runs)
        _, f32_messages = consume_only(settings, "in.f32", n)
        r["decode_only"], runs_detail["decode_only"] = median3(lambda: decode_only(consumed, settings), runs)
        r["decode_only_f32"], runs_detail["decode_only_f32"] = median3(
            lambda: decode_only(f32_messages, settings), runs
        )
        values = np.stack([decode_json(m.value, (T, F)).values for m in consumed[: 16 * settings.batch.max_size]])
        threads_before = torch.get_num_threads()
        r["model_only"], runs_detail["model_only"] = median3(lambda: model_only(settings, values), runs)
        model_threads = torch.get_num_threads()
        if BF16:
            bf16 = settings_for({**env, "DETECTOR_MODEL__CPU_BF16": "true"})
            r["model_only_bf16"], runs_detail["model_only_bf16"] = median3(lambda: model_only(bf16, values), runs)
        torch.set_num_threads(threads_before)
        if BF16:
            r["bf16_probability_max_diff"], r["bf16_flag_changes"] = bf16_agreement()
        out_values = sample_outputs(settings, consumed[:n])
        keys = [m.key or b"" for m in consumed[:n]]
        r["produce_only"], runs_detail["produce_only"] = median3(
            lambda: produce_only(settings, "produce.out", out_values, keys), runs
        )
        print(f"bench: stages measured at {time.monotonic() - began:.0f} s")

        rss: list[float] = []
        e2e_json, e2e_f32, e2e_bf16 = [], [], []
        for i in range(runs):
            rate, daemon = drain(bs, ckpt, "in.json", n, f"e2e-json-{i}", logs)
            e2e_json.append(rate)
            rss.append(daemon.peak_rss_mb)
            rate, daemon = drain(bs, ckpt, "in.f32", n, f"e2e-f32-{i}", logs)
            e2e_f32.append(rate)
            rss.append(daemon.peak_rss_mb)
            if BF16:
                extra = {"DETECTOR_MODEL__CPU_BF16": "true"}
                rate, daemon = drain(bs, ckpt, "in.json", n, f"e2e-bf16-{i}", logs, **extra)
                e2e_bf16.append(rate)
                rss.append(daemon.peak_rss_mb)
        r["e2e"], runs_detail["e2e"] = statistics.median(e2e_json), e2e_json
        r["e2e_f32"], runs_detail["e2e_f32"] = statistics.median(e2e_f32), e2e_f32
        if BF16:
            r["e2e_bf16"], runs_detail["e2e_bf16"] = statistics.median(e2e_bf16), e2e_bf16
        print(f"bench: e2e measured at {time.monotonic() - began:.0f} s")

        r["per_message"], runs_detail["per_message"] = median3(
            lambda: per_message(settings, "in.json", "naive.out"), runs
        )

        rate = r["e2e"] / 2
        seconds = 6 if args.quick else 12
        paced = windows(int(rate * seconds), F, T, seed=9)
        ids = [ln["window_id"] for ln in paced]
        records = json_records(paced)
        tiny = default_checkpoint(OUT / "floor.ckpt", F, T, network=FLOOR_NETWORK)
        passthrough, served, floor = [], [], []
        for i in range(runs):  # alternated, each on a broker of its own (see latency_run)
            passthrough.append(latency_run("pass", ckpt, records, ids, rate, logs, i)[0])
            result, daemon = latency_run("daemon", ckpt, records, ids, rate, logs, i)
            served.append(result)
            rss.append(daemon.peak_rss_mb)
            floor.append(latency_run("floor", tiny, records, ids, rate, logs, i, **FLOOR_ENV)[0])
        for key, runs_of in (("passthrough", passthrough), ("e2e", served), ("floor", floor)):
            r[f"{key}_p50_ms"] = statistics.median(x["p50"] for x in runs_of)
            r[f"{key}_p99_ms"] = statistics.median(x["p99"] for x in runs_of)
        runs_detail["latency"] = {"rate": rate, "passthrough": passthrough, "daemon": served, "floor": floor}
        print(f"bench: latency measured at {time.monotonic() - began:.0f} s")

        # Sized by the rate just measured, so the drain lasts ~SWAP_SECONDS with the swap well inside it.
        swap_n = int(r["e2e_f32"] * SWAP_SECONDS)
        create_topics(bs, ["in.swap"])
        fill(bs, "in.swap", f32_records(windows(swap_n, F, T, seed=5)))
        # One second of output moves by a batch or two (0.05-0.1) with the machine's own noise, as large away
        # from a swap as beside it: the median of 3 swaps, each by a daemon of its own on the same input.
        swaps = [swap_dip(bs, ckpt, "in.swap", swap_n, logs, i) for i in range(runs)]
        r["swap_dip"] = statistics.median(dip for dip, _ in swaps)
        runs_detail["swap"] = [{"dip": round(dip, 3), **detail} for dip, detail in swaps]
        r["rss_mb"] = max(rss)

    r["e2e_over_bound"] = r["e2e"] / min(r["consume_only"], r["model_only"])
    serial = 1 / r["consume_only"] + 1 / r["decode_only"] + 1 / r["model_only"] + 1 / r["produce_only"]
    r["e2e_over_serial"] = r["e2e"] * serial
    r["e2e_over_per_message"] = r["e2e"] / r["per_message"]
    r["p99_over_passthrough"] = r["e2e_p99_ms"] / r["passthrough_p99_ms"]
    r["floor_p99_over_passthrough"] = r["floor_p99_ms"] / r["passthrough_p99_ms"]
    r["e2e_f32_over_e2e"] = r["e2e_f32"] / r["e2e"]
    if BF16:
        r["model_only_bf16_over_fp32"] = r["model_only_bf16"] / r["model_only"]
        r["e2e_bf16_over_fp32"] = r["e2e_bf16"] / r["e2e"]
    r = {k: round(float(v), 4 if k == "bf16_probability_max_diff" else 3) for k, v in r.items()}
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "torch_threads_model": model_threads,
        "bf16": "native on this CPU: model_only_bf16 and e2e_bf16 with model.cpu_bf16=true (JSON input)"
        if BF16
        else "not native on this CPU: not measured",
        "command": "make bench" if not args.quick else "bench/e2e.py --quick",
        "windows": n,
        "runs": runs,
        "seconds": round(time.monotonic() - began),
        "runs_detail": runs_detail,
    }
    table = render(r, meta)
    (OUT / "results.md").write_text(table)
    print(table)
    checked = report(TARGETS, r, {} if BF16 else {k: NOT_MEASURED for k in TARGETS if "bf16" in k})
    (OUT / "results.json").write_text(json.dumps({**r, "targets": checked, "meta": meta}, indent=2) + "\n")


def sample_outputs(settings: Settings, messages: list[Message]) -> list[bytes]:
    """Output records as the daemon writes them (same fields and sizes), for the producer stage."""
    from detector.model import checkpoint
    from detector.serve.model_check import build_scorer

    scorer = build_scorer(checkpoint.load(settings.model.checkpoint), settings.model)  # type: ignore[arg-type]
    windows_ = [decode_json(m.value, (T, F)) for m in messages[:1024]]
    scores = scorer.score(np.stack([w.values for w in windows_]))
    now = time.time_ns() // 1_000_000
    k = len(windows_)
    recs = scorer.records(windows_, scores, [w.window_id for w in windows_], [now] * k, [12.5] * k)
    encoded = [encode_json(rec) for rec in recs]
    return [encoded[i % len(encoded)] for i in range(len(messages))]


UNITS = {"_ms": "ms", "swap_dip": "fraction", "rss_mb": "MB", "_over_": "ratio", "_diff": "probability",
         "_changes": "windows"}  # fmt: skip


def render(r: dict[str, float], meta: dict[str, Any]) -> str:
    """The figures as a Markdown table; a figure with a target has its limit and verdict (TARGETS) beside it."""
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}, torch {meta['torch']} "
        f"({meta['torch_threads_model']} thread(s) for the model), {meta['windows']} windows per topic, "
        f"median of {meta['runs']}, {meta['seconds']} s in all",
        "",
        "| figure | value | unit | target |",
        "| --- | ---: | --- | --- |",
    ]
    for key, value in r.items():
        unit = next((u for suffix, u in UNITS.items() if suffix in key), "windows/s")
        check = ""
        if key in TARGETS:
            target = TARGETS[key]
            check = f"{target.op} {number(target.limit)}: {verdict(target, value)}"
        shown = f"{value:,.0f}" if unit in ("windows/s", "MB", "windows") else f"{value:,.3g}"
        lines.append(f"| {key} | {shown} | {unit} | {check} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
