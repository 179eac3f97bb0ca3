"""The benchmark harness runs: one quick section end to end writes its results file.

No figure is checked (the benchmark is where figures live, never the test suite): only that the
harness starts a real server, drives it and stops it, and that the JSON has the expected shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.processes
def test_quick_forcerun_section_writes_results(tmp_path):
    out = tmp_path / "results.json"
    argv = [sys.executable, "bench/run.py", "--quick", "--only", "forcerun", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["machine"]["cores"] >= 1
    names = [f["name"] for f in results["figures"]]
    assert "force-run round trip p50" in names
    assert all(f["median"] is not None for f in results["figures"])
