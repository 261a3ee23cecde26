"""Mistral's ``[TOOL_CALLS]``: a JSON array of calls (tokenizers before v11), or one call per
marker as ``NAME{...}`` (v11) / ``NAME[ARGS]{...}`` (v13, optionally ``NAME[CALL_ID]ID[ARGS]``)."""

from __future__ import annotations

import re

from llmserve.parsers.base import PartialCall, Section, ToolParser
from llmserve.parsers.json_calls import arguments_at, call_sequence, skip_ws
from llmserve.parsers.markers import could_start

_NAME = re.compile(r"[A-Za-z0-9_\-.]+")
_ID = re.compile(r"\[CALL_ID\]([A-Za-z0-9]*)")


class MistralToolParser(ToolParser):
    """Mistral, Mixtral, Mistral Small/Large, Devstral, Magistral: ``[TOOL_CALLS]``."""

    start_markers = ("[TOOL_CALLS]",)
    needs_special_tokens = True

    def parse_section(self, text: str, final: bool) -> Section:
        pos = skip_ws(text, self.marker_len)
        if pos >= len(text):
            return Section(failed=final)
        if text[pos] in "[{":
            calls, end, failed = call_sequence(self, text, pos, final, separators=",")
            return Section(calls, end, failed)
        name = _NAME.match(text, pos)
        if name is None or (name.end() == len(text) and not final):
            return Section(failed=name is None or final)
        pos = name.end()
        call_id = None
        rest = text[pos:]
        if rest.startswith("[CALL_ID]"):
            found = _ID.match(text, pos)
            if found.end() == len(text) and not final:
                return Section()
            call_id, pos = found.group(1) or None, found.end()
            rest = text[pos:]
        if rest.startswith("[ARGS]"):
            pos += len("[ARGS]")
        elif not final and (could_start(rest, "[ARGS]") or could_start(rest, "[CALL_ID]")) and len(rest) < 9:
            return Section()
        pos = skip_ws(text, pos)
        if pos >= len(text):
            return Section(failed=final)
        if text[pos] != "{":
            return Section(failed=True)
        arguments, done, error = arguments_at(self, text, pos, final)
        call = PartialCall(name.group(), arguments, done, call_id)
        if not done:
            return Section([call])
        scan = self.json_at(text, pos, final)
        return Section(
            [call], scan.done if scan.done is not None else (len(text) if error is None else error)
        )
