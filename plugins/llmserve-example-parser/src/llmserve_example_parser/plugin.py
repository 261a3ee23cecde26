"""``angle-calls``: calls written as ``<<call NAME {json}>>``, any number, anywhere in the text."""

from __future__ import annotations

import re

from llmserve.api import PartialCall, Section, ToolParser, arguments_at, close_after, hookimpl

_NAME = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s+")


class AngleCallsParser(ToolParser):
    """``<<call get_weather {"city": "Paris"}>>``."""

    start_markers = ("<<call ",)

    def parse_section(self, text: str, final: bool) -> Section:
        name = _NAME.match(text, self.marker_len)
        if name is None or name.end() == len(text):
            waiting = not final and re.fullmatch(r"\s*[\w.\-]*", text[self.marker_len :])
            return Section() if waiting else Section(failed=True)
        if not text.startswith("{", name.end()):
            return Section(failed=True)
        arguments, done, error = arguments_at(self, text, name.end(), final)
        call = PartialCall(name.group(1), arguments, done)
        scan = self.json_at(text, name.end(), final)
        if scan.done is None:
            return Section([call], None if not done else (len(text) if error is None else error))
        return Section([call], close_after(text, scan.done, ">>", final))


@hookimpl
def llmserve_tool_parsers(register):
    register("angle-calls", AngleCallsParser)
