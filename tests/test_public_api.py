"""The public plugin API: packs and built-in protocols import ``llmserve.api`` (or ``llmserve``)
only, and every name it exports is documented."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import llmserve.api as api

ROOT = Path(__file__).parent.parent
PROTOCOLS = ROOT / "src" / "llmserve" / "protocols"


def _llmserve_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] == "llmserve"]
    return found


def _offending(paths, allowed) -> list[str]:
    return [
        f"{path.name}:{line}: {name}"
        for path in paths
        for line, name in _llmserve_imports(path)
        if not any(name == a or name.startswith(a + ".") for a in allowed) and name != "llmserve"
    ]


def test_packs_import_only_the_public_api():
    sources = [p for p in (ROOT / "plugins").rglob("*.py") if "tests" not in p.parts]
    assert sources, "no pack sources found under plugins/"
    assert _offending(sources, ["llmserve.api"]) == []


@pytest.mark.parametrize("package", ["openai", "vllm", "audio", "responses", "anthropic", "webui"])
def test_built_in_protocols_import_only_the_public_api(package):
    sources = list((PROTOCOLS / package).rglob("*.py"))
    assert _offending(sources, ["llmserve.api", f"llmserve.protocols.{package}"]) == []


def test_the_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import llmserve\nfrom llmserve.engine.engine import LLMEngine\nfrom llmserve.api import context\n"
    )
    assert _offending([bad], ["llmserve.api"]) == ["bad.py:2: llmserve.engine.engine"]


def test_every_public_name_has_a_docstring():
    missing = []
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(name)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if (
                        inspect.isfunction(member)
                        and not attr.startswith("_")
                        and not (member.__doc__ or "").strip()
                    ):
                        missing.append(f"{name}.{attr}")
    assert missing == []


def test_all_lists_what_the_module_defines():
    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        assert hasattr(api, name), name
