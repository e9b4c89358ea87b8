"""The CPU count the daemon sizes its torch threads by honours container quotas."""

from __future__ import annotations

from pathlib import Path

from detector import cpus


def test_cgroup_v2_quota_in_cpus(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert cpus.cgroup_limit(v2, (tmp_path / "a", tmp_path / "b")) == 1.5
    v2.write_text("max 100000\n")
    assert cpus.cgroup_limit(v2, (tmp_path / "a", tmp_path / "b")) is None


def test_cgroup_v1_quota_and_no_cgroup(tmp_path: Path) -> None:
    quota, period = tmp_path / "q", tmp_path / "p"
    quota.write_text("200000\n")
    period.write_text("100000\n")
    assert cpus.cgroup_limit(tmp_path / "missing", (quota, period)) == 2.0
    quota.write_text("-1\n")
    assert cpus.cgroup_limit(tmp_path / "missing", (quota, period)) is None
    assert cpus.cgroup_limit(tmp_path / "missing", (tmp_path / "x", tmp_path / "y")) is None


def test_a_quota_caps_the_count(monkeypatch) -> None:
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_limit", lambda: 1.5)
    assert cpus.available_cpus() == 2
    monkeypatch.setattr(cpus, "cgroup_limit", lambda: None)
    assert cpus.available_cpus() == 64
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cpus.available_cpus() == 3
