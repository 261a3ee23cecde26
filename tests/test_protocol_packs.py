"""Every pack under plugins/ installs with pip and passes its own tests inside a real server.

The packs install together (as a user who wants several would install them) and their suites run
two at a time: most of a pack suite's time is spent waiting on servers and Ray, not computing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

PACKS = sorted(
    p for p in (Path(__file__).parent.parent / "plugins").iterdir() if (p / "pyproject.toml").exists()
)
FIRST = ("llmserve-ray",)  # the longest suite starts first; the others follow beside it
PIP = [sys.executable, "-m", "pip"]
MARK = os.environ.get("LLMSERVE_PACK_TESTS", "not slow")  # nox -s slow: "slow"


def _suite(pack: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", MARK, str(pack / "tests")]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=pack)


@pytest.fixture(scope="module")
def suites(smollm2_dir, minilm_dir) -> tuple[str, dict[str, Future]]:
    """The packs installed, each one's suite started; (what `llmserve plugins` lists, the suites)."""
    subprocess.run([*PIP, "install", "-q", "--no-deps", "--no-build-isolation", *map(str, PACKS)], check=True)
    try:
        listed = subprocess.run([sys.executable, "-m", "llmserve", "plugins"], capture_output=True, text=True)
        order = sorted(PACKS, key=lambda p: p.name not in FIRST)
        with ThreadPoolExecutor(max_workers=2) as pool:
            yield listed.stdout, {p.name: pool.submit(_suite, p) for p in order}
    finally:
        subprocess.run([*PIP, "uninstall", "-q", "-y", *(p.name for p in PACKS)], check=True)


@pytest.mark.parametrize("pack", PACKS, ids=[p.name for p in PACKS])
def test_pack_installs_and_passes_its_tests(pack: Path, suites):
    listed, running = suites
    assert pack.name in listed
    result = running[pack.name].result()
    ok = (0, 5) if MARK == "slow" else (0,)  # 5: the pack has no slow tests
    assert result.returncode in ok, result.stdout[-3000:] + result.stderr[-2000:]
