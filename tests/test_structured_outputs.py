"""Structured outputs and enforced tool_choice through the real server (SmolLM2, the OpenAI SDK).

Every form of constraint must produce output that validates, streaming and not, with n=2 and
mixed into a batch with unconstrained requests, whose greedy output must not change. Bad
constraints are 400s that never reach the engine.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
}
PROMPTS = ["Invent a person.", "Who is the admin? Reply in JSON."]
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
CHOICES = ["yes", "no", "maybe"]
EBNF = 'root ::= "The answer is " ("red" | "green" | "blue") "."'
LARK = 'start: "The answer is " COLOR "."\nCOLOR: "red" | "green" | "blue"'
COLOR_SENTENCE = r"The answer is (red|green|blue)\."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "maximum": 999},
                    "b": {"type": "integer", "maximum": 999},
                },
                "required": ["a", "b"],
            },
        },
    },
]


def is_person(text: str) -> bool:
    jsonschema.validate(json.loads(text), PERSON)
    return True


# (request fields, check of one output, the vLLM/OpenAI spelling under test)
FORMS = {
    "json_schema": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
        is_person,
    ),
    "json_object": ({"response_format": {"type": "json_object"}}, lambda t: isinstance(json.loads(t), dict)),
    "so_json": ({"structured_outputs": {"json": PERSON}}, is_person),
    "so_json_compact": (
        {"structured_outputs": {"json": PERSON, "disable_any_whitespace": True}},
        lambda t: is_person(t) and "\n" not in t,
    ),
    "so_regex": ({"structured_outputs": {"regex": DATE}}, lambda t: re.fullmatch(DATE, t)),
    "so_choice": ({"structured_outputs": {"choice": CHOICES}}, lambda t: t in CHOICES),
    "so_ebnf": ({"structured_outputs": {"grammar": EBNF}}, lambda t: re.fullmatch(COLOR_SENTENCE, t)),
    "so_lark": ({"structured_outputs": {"grammar": LARK}}, lambda t: re.fullmatch(COLOR_SENTENCE, t)),
    "so_whitespace_pattern": (  # guidance only
        {"structured_outputs": {"json": PERSON, "whitespace_pattern": "[ ]?"}},
        lambda t: is_person(t) and "\n" not in t,
    ),
    "structural_tag": (
        {
            "response_format": {
                "type": "structural_tag",
                "format": {"type": "const_string", "value": "OK"},
            }
        },
        lambda t: t == "OK",
    ),
    "guided_json": ({"guided_json": PERSON}, is_person),
    "guided_choice": ({"guided_choice": CHOICES}, lambda t: t in CHOICES),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_validates_on_completions(client, model, form):
    fields, check = FORMS[form]
    out = client.completions.create(
        model=model, prompt=PROMPTS, max_tokens=48, temperature=0, extra_body=fields
    )
    assert len(out.choices) == len(PROMPTS)
    for choice in out.choices:
        assert choice.finish_reason == "stop", (form, choice.text)
        assert check(choice.text), (form, choice.text)


@pytest.mark.parametrize("form", ["so_json_compact", "so_regex"])
def test_chat_streaming_and_n2(client, model, form):
    fields, check = FORMS[form]
    messages = [{"role": "user", "content": PROMPTS[0]}]
    # Sampled text must still end by itself: 96 tokens bound a PERSON even when each of the
    # name's 10 characters takes four byte tokens.
    kw = dict(model=model, messages=messages, max_tokens=96, n=2, temperature=0.8, extra_body=fields)
    out = client.chat.completions.create(seed=7, **kw)
    assert len(out.choices) == 2
    for choice in out.choices:
        assert choice.finish_reason == "stop" and check(choice.message.content), choice.message.content
    stream = client.chat.completions.create(seed=8, stream=True, **kw)
    texts, reasons = ["", ""], [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert reasons == ["stop", "stop"] and all(check(t) for t in texts), texts


def test_vllm_generate_takes_structured_outputs(server):
    for fields, check in (FORMS["so_json"], FORMS["so_regex"], FORMS["guided_choice"]):
        body = {"prompt": PROMPTS[0], "max_tokens": 48, "temperature": 0, **fields}
        data = httpx.post(server + "/generate", json=body, timeout=120).json()
        text = data["text"][0].removeprefix(PROMPTS[0])
        assert data["finish_reason"] == ["stop"] and check(text), data


def test_unconstrained_requests_in_the_same_batch_are_unchanged(client, model):
    plain = ["The capital of France is", "def fibonacci(n):"]

    def free(prompt):
        return (
            client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
            .choices[0]
            .text
        )

    alone = [free(p) for p in plain]

    def constrained(i):
        fields, check = FORMS[["so_json", "so_regex", "so_choice", "so_ebnf"][i % 4]]
        out = client.completions.create(
            model=model, prompt=PROMPTS[i % 2], max_tokens=48, temperature=0, extra_body=fields
        )
        return check(out.choices[0].text)

    with ThreadPoolExecutor(8) as pool:
        checks = [pool.submit(constrained, i) for i in range(4)]
        mixed = [pool.submit(free, p) for p in plain]
        assert all(c.result() for c in checks)
        assert [m.result() for m in mixed] == alone


def tool_args(call, name):
    assert call.function.name == name and call.id.startswith("chatcmpl-tool-")
    args = json.loads(call.function.arguments)
    jsonschema.validate(
        args, next(t for t in TOOLS if t["function"]["name"] == name)["function"]["parameters"]
    )
    return args


def test_named_tool_choice_follows_the_parameters_schema(client, model):
    messages = [{"role": "user", "content": "What is 12 plus 30?"}]
    choice = {"type": "function", "function": {"name": "add"}}
    out = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=40, temperature=0
    )
    [call] = out.choices[0].message.tool_calls
    tool_args(call, "add")
    with pytest.raises(openai.BadRequestError, match="cannot be used with tool_choice"):
        client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=5,
            extra_body={"structured_outputs": {"regex": "a+"}},
        )  # fmt: skip


def test_required_tool_choice_gives_calls_streaming_name_first(client, model):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    kwargs = dict(
        model=model, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
    )
    out = client.chat.completions.create(**kwargs)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        tool_args(call, call.function.name)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": None, "arguments": ""})
            if delta.function.name:
                assert entry["name"] is None and not entry["arguments"]  # the name comes first
                entry["name"] = delta.function.name
                assert delta.id.startswith("chatcmpl-tool-")
            entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and calls
    assert [c["name"] for c in calls.values()] == [c.function.name for c in choice.message.tool_calls]
    for entry in calls.values():
        jsonschema.validate(
            json.loads(entry["arguments"]),
            next(t for t in TOOLS if t["function"]["name"] == entry["name"])["function"]["parameters"],
        )


BAD = [
    ({"structured_outputs": {"regex": "(unclosed"}}, "regex", "parenthesis"),
    ({"structured_outputs": {"json": {"type": "nonsense"}}}, "json_schema", "nonsense"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json", "not valid JSON"),
    ({"structured_outputs": {"grammar": 'root ::= "a" missing'}}, "grammar", "missing"),
    (
        {"structured_outputs": {"json": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}}},
        "json_schema",
        "self-referential",
    ),
    (
        {"structured_outputs": {"json": {"type": "array", "contains": {"type": "string"}, "not": {}}}},
        "json_schema",
        "contains",
    ),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"choice": []}}, "choice", "non-empty list"),
    ({"structured_outputs": {"jsn": {}}}, "structured_outputs", "unknown field"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ({"guided_regex": "a", "structured_outputs": {"regex": "b"}}, "guided_regex", "not several"),
    ({"guided_json": PERSON, "guided_decoding_backend": "outlines"}, "guided_decoding_backend", "outlines"),
    (
        {
            "structured_outputs": {"json": PERSON, "whitespace_pattern": " "},
            "guided_decoding_backend": "xgrammar",
        },
        "structured_outputs",
        "guidance",
    ),
]


@pytest.mark.parametrize("fields,param,words", BAD)
def test_bad_constraints_are_400_naming_the_problem(server, fields, param, words):
    response = httpx.post(
        server + "/v1/completions", json={"prompt": "x", "max_tokens": 4, **fields}, timeout=30
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_bad_constraints_mixed_into_good_ones_leave_the_engine_clean(server, client, model):
    def good(i):
        fields, check = FORMS[["so_json", "so_regex", "so_choice"][i % 3]]
        out = client.completions.create(
            model=model, prompt=PROMPTS[i % 2], max_tokens=48, temperature=0, extra_body=fields
        )
        return all(c.finish_reason == "stop" and check(c.text) for c in out.choices)

    def bad(i):
        fields = BAD[i % len(BAD)][0]
        return httpx.post(
            server + "/v1/completions", json={"prompt": "x", "max_tokens": 4, **fields}, timeout=120
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        goods = [pool.submit(good, i) for i in range(6)]
        bads = [pool.submit(bad, i) for i in range(100)]
        assert [b.result() for b in bads] == [400] * 100
        assert all(g.result() for g in goods)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = httpx.get(server + "/metrics").text
        if re.search(r"^llmserve:kv_cache_usage_perc(?:\{[^}]*\})? 0(\.0)?$", text, re.M):
            break
        time.sleep(0.2)
    assert re.search(r"^llmserve:kv_cache_usage_perc(?:\{[^}]*\})? 0(\.0)?$", text, re.M), "KV blocks leaked"
    assert re.search(r"^llmserve:num_requests_running(?:\{[^}]*\})? 0(\.0)?$", text, re.M)
