"""Every pack under plugins/ installs with pip and passes its own tests inside a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKS = sorted(
    p for p in (Path(__file__).parent.parent / "plugins").iterdir() if (p / "pyproject.toml").exists()
)


@pytest.mark.parametrize("pack", PACKS, ids=[p.name for p in PACKS])
def test_pack_installs_and_passes_its_tests(pack: Path, smollm2_dir, minilm_dir):
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(pack)], check=True)
    try:
        listed = subprocess.run([sys.executable, "-m", "llmserve", "plugins"], capture_output=True, text=True)
        assert pack.name in listed.stdout
        mark = os.environ.get("LLMSERVE_PACK_TESTS", "not slow")  # nox -s slow: "slow"
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", mark, str(pack / "tests")],
                                capture_output=True, text=True, cwd=pack)  # fmt: skip
        ok = (0, 5) if mark == "slow" else (0,)  # 5: the pack has no slow tests
        assert result.returncode in ok, result.stdout[-3000:] + result.stderr[-2000:]
    finally:
        subprocess.run([*pip, "uninstall", "-q", "-y", pack.name], check=True)
