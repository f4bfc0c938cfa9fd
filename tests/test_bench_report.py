"""The pressure scenario's JSON gives back the table the command printed (the docs' tables)."""

from __future__ import annotations

import json

from volcache.bench import report
from volcache.bench.contestants import Contestant
from volcache.bench.oracle import oracle
from volcache.bench.results import Result, Settings


def results() -> list[Result]:
    return [
        Result(Contestant("volcache-kernel", "volcache", backend="kernel"), ops=3000, hits=2400,
               served=20.0, peak_rss=250 << 20, returned=130 << 20, return_s=1.5,
               competitor_steps=[[6.0, 2.5], [6.1, 4.0], [6.2, 3.0]]),
        Result(Contestant("LRUCache-50%", "lru", fraction=0.5), status="killed", killed_at=7.8,
               fill_s=2.0, ops=1200, hits=900, served=7.8, peak_rss=170 << 20),
        Result(Contestant("LRUCache-100%", "lru", fraction=1.0), status="killed"),
        Result(Contestant("no cache", "none"), ops=900, served=20.0, peak_rss=30 << 20),
    ]  # fmt: skip


def test_the_table_of_a_written_document_is_the_printed_table(tmp_path):
    settings = Settings(limit=64 << 20, duration=10.0)
    made = results()
    yardstick = oracle(settings, made)
    path = tmp_path / "run.json"
    report.write_json(path, settings, "cgroup", "a machine", made, yardstick)
    printed = report.table(made, yardstick)
    assert report.table_of(json.loads(path.read_text())) == printed
    assert "oracle" in printed and "killed at 7.8 s" in printed and "killed in the fill" in printed


def test_a_document_without_an_oracle_has_no_oracle_row(tmp_path):
    settings = Settings(limit=64 << 20, duration=10.0)
    path = tmp_path / "run.json"
    report.write_json(path, settings, "cgroup", "a machine", results())
    table = report.table_of(json.loads(path.read_text()))
    assert table == report.table(results())
    assert "oracle" not in table.splitlines()[-1]
