"""Every command line in README.md's ```bash blocks runs as a newcomer would type it, from a copy of the checkout.

The checkout is mirrored into ``tmp_path`` by symbolic links (so outputs land there, never in the repository) and
``run.sh`` is pointed at the environment running these tests with ``INTERP_VENV`` (its set-up, a pip install, is
not repeated here). What cannot finish here is checked as far as it can be: the dashboard is started and must
answer its health check; torchrun and the GPU check run their ``--help`` through the same plumbing; the test suite
commands collect their tests and print the estimate.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRRORED = ("run.sh", "pyproject.toml", ".streamlit", "apps", "benchmarks", "interp", "models", "probes", "scripts",
            "tests")


def readme_commands(text: str) -> list[str]:
    """The command lines of every ```bash block (comments and blank lines dropped, ``\\`` continuations joined)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_commands_are_found_and_go_through_the_environment():
    assert any(c.startswith("bash run.sh report") for c in COMMANDS)
    assert "bash run.sh test" in COMMANDS and any("-m quick" in c for c in COMMANDS)
    assert any(c.startswith("source .venv/bin/activate") for c in COMMANDS)
    # a newcomer's shell has no torch: every line must enter the environment first
    for c in COMMANDS:
        assert c.startswith(("bash run.sh ", "source .venv/bin/activate")), c


@pytest.fixture
def checkout(tmp_path):
    for name in MIRRORED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # what run.sh's set-up leaves behind
    env = dict(os.environ, INTERP_VENV=sys.prefix, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    for var in ("VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    return tmp_path, env


def run_line(line: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert res.returncode == 0, f"{line!r} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def check_server(line: str, cwd: Path, env: dict, timeout: float = 120) -> None:
    """Start the documented server (on this machine only) on a free port and wait for its health check; then
    stop it."""
    from interp.report.chromium import free_port

    port = free_port()
    line += f" --server.headless true --server.port {port} --browser.gatherUsageStats false"
    proc = subprocess.Popen(["bash", "-c", f"exec {line}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{line!r} exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().strip() == b"ok":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{line!r} did not answer its health check within {timeout} s")
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def is_main_report(line: str) -> bool:
    return line.startswith("bash run.sh report")


@pytest.mark.parametrize("line", [c for c in COMMANDS if not is_main_report(c)])
def test_readme_command_runs(line, checkout):
    cwd, env = checkout
    if " streamlit run " in f" {line} ":
        check_server(line, cwd, env)
        return
    # several processes / a GPU / a server on every interface: the same path, up to --help
    if "torchrun" in line or "gpu_check.sh" in line or line.startswith("bash run.sh dashboard"):
        res = run_line(f"{line} --help", cwd, env)
        assert "usage:" in res.stdout
        return
    if line.startswith("bash run.sh test"):  # the suite itself is what CI runs; here it is collected
        res = run_line(f"{line} --collect-only tests/test_readme.py", cwd, env)
        assert re.search(r"^run\.sh test: \d+ tests, about .+", res.stdout, flags=re.MULTILINE), res.stdout[-2000:]
        return
    res = run_line(line, cwd, env)
    if line.endswith("interp models") or line == "bash run.sh models":
        assert "docs-bible-austen-2l" in res.stdout
    if "probe attention" in line or "probes/attention.py" in line:
        assert "induction" in res.stdout or "previous" in res.stdout, res.stdout[-2000:]


@pytest.mark.slow
def test_readme_main_command_runs_twice(checkout):
    """The report on the shipped model, as written, and again (a newcomer re-runs the command they were given)."""
    cwd, env = checkout
    (line,) = [c for c in COMMANDS if is_main_report(c)]
    out = re.search(r"--out (\S+)", line).group(1)
    for _ in range(2):
        res = run_line(line, cwd, env, timeout=600)
        assert "wrote " + out in res.stdout
    assert "The LORD" in (cwd / out).read_text(encoding="utf-8")
