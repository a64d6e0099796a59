"""The soak's short mode (benchmarks/soak.py): 64 clients of every kind for about a minute
against `--parallel 16 --max-queue 32`, judged by counts, never by speed."""

from __future__ import annotations

from benchmarks.soak import KINDS, SHORT, run, verdict


def test_short_soak(tmp_path):
    report = run(SHORT["duration"], SHORT["warm_after"], str(tmp_path / "chatd.log"))
    assert verdict(report) == [], report
    # what the verdict stands on, spelled out
    assert report["failures"] == {}
    assert not any(status.startswith("5") for status in report["statuses"])
    assert all(report["by_kind"][kind] > 0 for kind in KINDS)
    assert report["seeded_compared"] > 0
    assert report["sequences_left"] == 0 and report["healthy_after"]
    assert report["exit_code"] == 0 and report["tracebacks_in_log"] == 0
    assert report["rss_end_mb"] <= report["rss_warm_mb"] * 1.10
