"""``--tool-parser-plugin PATH`` loads parsers from a Python file, as vLLM's flag does."""

from __future__ import annotations

import textwrap

import pytest

from llmserve.config import build_config
from llmserve.errors import ConfigError
from llmserve.plugins import load_plugins
from llmserve.server.startup import check_config

HOOKS = textwrap.dedent(
    '''
    import json
    from llmserve.api import PartialCall, Section, ToolParser, hookimpl

    class Angle(ToolParser):
        """<<name {json}>>"""
        start_markers = ("<<",)

        def parse_section(self, text, final):
            end = text.find(">>")
            if end < 0:
                return Section(end=None if not final else 0, failed=final)
            name, _, arguments = text[2:end].partition(" ")
            return Section([PartialCall(name, arguments, True)], end + 2)

    @hookimpl
    def llmserve_tool_parsers(register):
        register("angle", Angle)
    '''
)

TABLE = HOOKS.replace("@hookimpl", "").replace(
    "def llmserve_tool_parsers(register):", "def unused(register):"
)
TABLE += '\nTOOL_PARSERS = {"angle-table": Angle}\n'


@pytest.mark.parametrize("source, name", [(HOOKS, "angle"), (TABLE, "angle-table")], ids=["hooks", "table"])
def test_a_parser_file_registers_its_parsers(tmp_path, source, name):
    path = tmp_path / "my_parsers.py"
    path.write_text(source)
    config = build_config(tool_parser_plugin=str(path), tool_call_parser=name, embedding_model="none")
    plugins = check_config(config, load_plugins(fresh=True, config=config))
    registered = plugins.tool_parsers()[name]
    assert registered.plugin == "my_parsers"
    content, calls = registered.obj().extract('Hi <<get_time {"tz": "UTC"}>>')
    assert (content, [(c.name, c.arguments) for c in calls]) == ("Hi ", [("get_time", '{"tz": "UTC"}')])


def test_without_the_file_the_parser_is_unknown_and_a_missing_file_fails_early(tmp_path):
    config = build_config(tool_call_parser="angle", embedding_model="none")
    with pytest.raises(ConfigError, match="unknown parser 'angle'"):
        check_config(config, load_plugins(fresh=True, config=config))
    with pytest.raises(ConfigError, match="--tool-parser-plugin: no such file"):
        build_config(tool_parser_plugin=str(tmp_path / "missing.py"))
