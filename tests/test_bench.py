"""bench/: the HF peer runs only when asked for with --hf-python, and a wrong interpreter is an error before any
work, never a quietly skipped comparison (the scripts once defaulted to one machine's venv and skipped HF
when it was missing)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["bench_generate.py", "bench_train.py"])
def test_hf_python_flag_is_required_for_the_peer_and_checked(script):
    path = os.path.join(ROOT, "bench", script)
    bad = subprocess.run([sys.executable, path, "--hf-python", "/no/such/python"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--hf-python /no/such/python: no such interpreter" in bad.stderr
    help_text = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "--hf-python" in help_text and "without it no HF peer runs" in " ".join(help_text.split())
