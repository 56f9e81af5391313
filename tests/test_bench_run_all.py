"""benchmarks/run_all.py: every published table is what its JSON says.

Runs the patching benchmark at toy size through run_all (a real subprocess, real timings), then reads the
regenerated RESULTS.md back and checks each number in the table against the JSON it came from; and checks that
the committed RESULTS.md's marked tables are exactly what the committed JSON renders to.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import machine
import run_all


def _block(text: str, name: str) -> str:
    start, end = run_all.marker(name)
    assert start in text and end in text, f"no run_all markers for {name}"
    return text.split(start, 1)[1].split(end, 1)[0]


def _table_rows(block: str) -> list[list[str]]:
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]  # skip header and rule


def _number(cell: str) -> float:
    return float(re.match(r"[-+0-9.e]+", cell.replace("×", "")).group(0))


def test_run_all_toy_patching_table_is_its_json(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\nhand-written text stays.\n")
    json_dir = tmp_path / "json"
    assert run_all.main(["--only", "patching", "--size", "toy", "--json-dir", str(json_dir),
                         "--results-md", str(results_md), "--timeout", "600"]) == 0
    result = json.loads((json_dir / "patching.json").read_text())
    text = results_md.read_text()
    assert "hand-written text stays." in text
    block = _block(text, "patching")
    for key in ("machine_before", "machine_after", "contended"):
        assert key in result
    assert machine.contention_note(result) in block  # the load and the verdict are printed with the table
    rows = _table_rows(block)
    assert [r[0] for r in rows] == [r["sweep"] for r in result["rows"]]
    for cells, r in zip(rows, result["rows"]):
        assert int(cells[1]) == r["cells"] == r["tl_cells_run"]  # a full sweep: nothing extrapolated
        for cell, key in ((cells[2], "tl_seconds_full_sweep"), (cells[3], "interp_seconds"),
                          (cells[5], "bound_seconds")):
            assert _number(cell) == pytest.approx(r[key], rel=5e-3)
        assert _number(cells[4]) == pytest.approx(r["tl_seconds_full_sweep"] / r["interp_seconds"], rel=0.06)
        # the two engines agree (the benchmark would be meaningless otherwise)
        assert r["max_abs_diff"] <= 1e-4 * max(1.0, r["metric_scale"])
        # the bound is the forward time weighted by each cell's share: at most one forward per cell
        assert 0 < r["bound_seconds"] <= r["forward_blocks_seconds"] * r["cells"] * (1 + 1e-9)
    # rendering again from the same JSON changes nothing (the table is a pure function of the JSON)
    run_all.render(results_md, json_dir)
    assert results_md.read_text() == text


def test_committed_results_tables_are_what_committed_json_says(tmp_path):
    committed = ROOT / "benchmarks" / "RESULTS.md"
    json_dir = ROOT / "benchmarks" / "results" / "run_all"
    names = [b.name for b in run_all.BENCHMARKS if (json_dir / f"{b.name}.json").exists()]
    if not names:
        pytest.skip("no run_all JSON committed yet")
    copy = tmp_path / "RESULTS.md"
    shutil.copy(committed, copy)
    run_all.render(copy, json_dir)
    for name in names:
        assert _block(copy.read_text(), name) == _block(committed.read_text(), name), name


def test_contention_verdict():
    quiet = {"loadavg": [0.1, 0.1, 0.1], "cpus": 2, "cpu": "x"}
    busy_before = {"loadavg": [3.0, 3.0, 3.0], "cpus": 2, "cpu": "x"}
    ours_after = {"loadavg": [2.5, 1.0, 0.5], "cpus": 2, "cpu": "x"}  # our own two threads, nothing else
    others_after = {"loadavg": [6.0, 3.0, 1.0], "cpus": 2, "cpu": "x"}
    assert not machine.is_contended(quiet, ours_after)
    assert machine.is_contended(busy_before, ours_after)
    assert machine.is_contended(quiet, others_after)


def test_interleaved_medians_alternate_contenders():
    order = []
    medians, samples, outputs = machine.interleaved({"a": lambda: order.append("a") or 1,
                                                     "b": lambda: order.append("b") or 2}, repeats=3)
    assert order == ["a", "b"] * 3
    assert outputs == {"a": 1, "b": 2}
    assert all(len(s) == 3 for s in samples.values())
    assert medians["a"] == sorted(samples["a"])[1]
    with pytest.raises(ValueError, match="repeats"):
        machine.interleaved({"a": lambda: None}, repeats=0)


def test_unknown_benchmark_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "nope", "--render-only"])
    assert e.value.code == 2
    assert "unknown benchmark" in capsys.readouterr().err
