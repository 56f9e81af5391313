"""benchmarks/gpu_check.sh in its CPU dry-run mode, as a plain CUDA image would run it: with transformers,
transformer_lens, pytest and hypothesis made unimportable, so a stray import of any of them fails here first."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = '''
import importlib.abc, sys
BLOCKED = {"transformers", "transformer_lens", "pytest", "hypothesis", "sklearn", "pandas"}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked for gpu_check's test: {name}")
        return None
sys.meta_path.insert(0, _Block())
'''


def test_gpu_check_dry_run_needs_only_torch_and_triton(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHON=sys.executable, PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]))
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    env_info = json.loads((out / "environment.json").read_text())
    assert env_info["transformer_lens"] is None and env_info["pytest"] is None  # the blocker held
    checks = json.loads((out / "kernel_checks.json").read_text())
    assert checks["failed"] == 0 and checks["passed"] >= 4
    assert {r["option"] for r in checks["rows"]} >= {"causal", "all", "window", "softcap"}
    rows = json.loads((out / "attention.json").read_text())["rows"]
    ours = [r for r in rows if r["impl"] == "ours"]
    assert {r["variant"] for r in ours} == {"causal", "full", "window", "softcap"}
    assert all(r["ms"] is not None for r in ours)
    steps = json.loads((out / "steps.json").read_text())
    assert "not installed" in steps["cache"]["skipped"]
    # the rest of run_all's GPU set: each benchmark that needs TransformerLens says so in one line, none fails
    assert steps["run_all"]["returncode"] == 0, steps["run_all"]
    for name in ("patching", "forward", "generate", "circuits", "edges"):
        line = rf"^{name}\s.*skipped \(needs transformer_lens"
        assert re.search(line, steps["run_all"]["stdout_tail"], re.MULTILINE), name
    assert json.loads((out / "summary.json").read_text())["kernel_checks"]["failed"] == 0
    # a second run never writes over the first
    again = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
                           capture_output=True, text=True, env=env, timeout=600, check=False)
    assert again.returncode == 2 and "already holds files" in again.stderr
