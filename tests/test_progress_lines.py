"""Progress where stderr is a log file: one line per step that outlasts INTERP_PROGRESS_AFTER seconds, no bars.

The delay is planted: 0 s makes every step say itself (so the check does not depend on the machine's
speed), 1000 s makes every step short enough to say nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_lines_follow_the_planted_delay(monkeypatch, capsys):
    from interp.progress import PhaseClock, StepLine, progress_bar, silenced

    monkeypatch.delenv("INTERP_PROGRESS", raising=False)
    monkeypatch.setenv("INTERP_PROGRESS_AFTER", "0")
    for _ in progress_bar(range(3), desc="counting", unit="step"):
        pass
    for _ in progress_bar(range(10), desc="stopping early", total=10):
        break
    clock = PhaseClock("cmd")
    with clock.phase("one", "doing one") as row:
        row["done"] = "7 things"
    assert capsys.readouterr().err.splitlines() == [
        "counting...", _done("counting", "3 step"), "stopping early...", _done("stopping early", "0 it of 10"),
        "cmd: doing one...", _done("cmd: doing one", "7 things")]
    assert list(clock.table().phase) == ["one", "total"]
    with silenced():  # a command's --quiet
        list(progress_bar(range(3), desc="hushed"))
    try:
        with StepLine("failing"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert capsys.readouterr().err.splitlines() == ["failing..."]  # no "done" line for a step that failed
    monkeypatch.setenv("INTERP_PROGRESS_AFTER", "1000")
    list(progress_bar(range(3), desc="quick"))
    with clock.phase("two", "doing two"):
        pass
    monkeypatch.setenv("INTERP_PROGRESS", "0")
    monkeypatch.setenv("INTERP_PROGRESS_AFTER", "0")
    list(progress_bar(range(3), desc="off"))
    assert capsys.readouterr().err == ""


def _done(text: str, what: str) -> str:
    """The end line, its seconds replaced by what the line must hold around them."""
    return f"{text}: done in 0.0 s ({what})"


def test_cli_with_stderr_in_a_file_prints_step_lines_and_no_bars(tmp_path):
    from conftest import saved_word_model_and_corpus

    _, model_dir, corpus = saved_word_model_and_corpus(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INTERP_PROGRESS_AFTER": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("INTERP_PROGRESS", None)
    commands = {
        "sae": ["sae", "train", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "sae"),
                "--steps", "20", "--batch-size", "64", "--d-sae", "32", "--k", "2"],
        "report": ["report", "t5 t7 t9 t11 t5 t7", "--model", str(model_dir), "--corpus", "none", "--out",
                   str(tmp_path / "r.html"), "--max-pairs", "200", "--sets", "W_E", "--heads", "1", "--neurons", "2"],
    }
    procs = {}
    for name, args in commands.items():  # both at once: two cores
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen([sys.executable, "-m", "interp", *args], cwd=tmp_path, env=env,
                                        stdout=subprocess.DEVNULL, stderr=log), log)
    for name, (proc, log) in procs.items():
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()
        log.close()
    sae_log, report_log = ((tmp_path / f"{n}.log").read_text() for n in ("sae", "report"))
    for log in (sae_log, report_log):
        assert "\r" not in log and "it/s" not in log and "%|" not in log, log  # no bar redraws
    lines = sae_log.splitlines()
    for step in ("loading the model and the corpus", "collecting blocks.0.hook_resid_post activations",
                 "training topk SAE with 32 latents", "evaluating on the held-out text"):
        assert f"sae train: {step}..." in lines, (step, sae_log)
        assert any(line.startswith(f"sae train: {step}: done in ") for line in lines), (step, sae_log)
    from interp.report.data import STAGES

    lines = report_log.splitlines()
    assert f"loading model {model_dir}..." in lines, report_log
    for stage in (*STAGES, "writing"):
        assert f"report: {stage}..." in lines, (stage, report_log)
