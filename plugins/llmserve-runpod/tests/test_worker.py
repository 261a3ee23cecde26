"""The worker under the RunPod SDK's local API server: /runsync, and /run + /stream/{id}, with
each input form, whole and streamed, against SmolLM2."""

from __future__ import annotations

import json

import httpx

CHAT = [{"role": "user", "content": "Name a colour."}]
GREEDY = {"temperature": 0, "max_tokens": 6}


def runsync(worker: str, job_input) -> list:
    reply = httpx.post(worker + "/runsync", json={"input": job_input}, timeout=120).json()
    assert reply["status"] == "COMPLETED", reply
    return reply["output"]


def run_and_stream(worker: str, job_input) -> list:
    job = httpx.post(worker + "/run", json={"input": job_input}, timeout=30).json()
    assert job["status"] == "IN_PROGRESS"
    reply = httpx.post(f"{worker}/stream/{job['id']}", timeout=120).json()
    assert reply["status"] == "COMPLETED", reply
    return [item["output"] for item in reply["stream"]]


def sse_data(chunks: list[str]) -> list:
    text = "".join(chunks)
    assert text.rstrip().endswith("data: [DONE]")
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_openai_chat_whole(worker):
    [answer] = runsync(worker, {"openai_route": "/v1/chat/completions",
                                "openai_input": {"model": "smol", "messages": CHAT, **GREEDY}})  # fmt: skip
    assert answer["object"] == "chat.completion" and answer["model"] == "smol"
    assert answer["choices"][0]["message"]["content"]
    assert 0 < answer["usage"]["completion_tokens"] <= 6


def test_openai_chat_streamed_matches_whole(worker):
    body = {"messages": CHAT, **GREEDY}
    [whole] = runsync(worker, {"openai_route": "/v1/chat/completions", "openai_input": body})
    chunks = runsync(
        worker, {"openai_route": "/v1/chat/completions", "openai_input": {**body, "stream": True}}
    )
    # worker-vllm's batching: the first chunk alone, then groups growing threefold
    assert len(chunks) >= 2 and all(isinstance(c, str) for c in chunks)
    assert chunks[0].count("data: ") == 1
    events = sse_data(chunks)
    assert events[0]["object"] == "chat.completion.chunk"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]


def test_openai_completion_run_and_stream(worker):
    body = {"prompt": "The sky is", "max_tokens": 5, "temperature": 0, "stream": True}
    streamed = run_and_stream(worker, {"openai_route": "/v1/completions", "openai_input": body})
    text = "".join(e["choices"][0]["text"] for e in sse_data(streamed) if e["choices"])
    [whole] = run_and_stream(
        worker, {"openai_route": "/v1/completions", "openai_input": {**body, "stream": False}}
    )
    assert whole["object"] == "text_completion" and text == whole["choices"][0]["text"] != ""


def test_openai_models_embeddings_responses_messages(worker):
    [models] = runsync(worker, {"openai_route": "/v1/models"})
    assert [m["id"] for m in models["data"]][0] == "smol"
    [emb] = runsync(worker, {"openai_route": "/v1/embeddings", "openai_input": {"input": "hello"}})
    assert len(emb["data"][0]["embedding"]) == 384
    [resp] = runsync(worker, {"openai_route": "/v1/responses",
                              "openai_input": {"input": "Hi", "max_output_tokens": 4}})  # fmt: skip
    assert resp["object"] == "response" and resp["status"] in ("completed", "incomplete")
    body = {"model": "smol", "max_tokens": 4, "messages": CHAT, "stream": True}
    events = "".join(run_and_stream(worker, {"openai_route": "/v1/messages", "openai_input": body}))
    assert "event: message_start" in events and "event: message_stop" in events


def test_native_messages_match_the_openai_route(worker):
    params = {"temperature": 0, "max_tokens": 6, "ignore_eos": True}
    [native] = runsync(worker, {"messages": CHAT, "sampling_params": params})
    [chat] = runsync(
        worker, {"openai_route": "/v1/chat/completions", "openai_input": {"messages": CHAT, **params}}
    )
    assert native["choices"][0]["tokens"] == [chat["choices"][0]["message"]["content"]]
    assert native["usage"] == {"input": chat["usage"]["prompt_tokens"], "output": 6}


def test_native_prompt_streamed_in_growing_batches(worker):
    params = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}
    [whole] = runsync(worker, {"prompt": "Once upon a time", "sampling_params": params})
    batches = run_and_stream(
        worker, {"prompt": "Once upon a time", "sampling_params": params, "stream": True}
    )
    assert "".join(batches[0]["choices"][0]["tokens"] + [t for b in batches[1:] for t in b["choices"][0]["tokens"]]) \
        == whole["choices"][0]["tokens"][0]  # fmt: skip
    # batches of 1, 3 and 4 tokens; usage counts the tokens so far
    assert [b["usage"]["output"] for b in batches] == [1, 4, 8]
    assert all(b["usage"]["input"] == whole["usage"]["input"] for b in batches)
    assert not whole["choices"][0]["tokens"][0].startswith("Once upon")


def test_native_n_choices_and_chat_template_for_a_prompt(worker):
    job = {"prompt": "Name a colour.", "apply_chat_template": True,
           "sampling_params": {"n": 2, "max_tokens": 4, "seed": 1, "ignore_eos": True}}  # fmt: skip
    [out] = runsync(worker, job)
    assert len(out["choices"]) == 2 and out["usage"]["output"] == 8
    [chat] = runsync(worker, {"messages": CHAT, "sampling_params": {"max_tokens": 1}})
    assert out["usage"]["input"] == chat["usage"]["input"]


def test_bad_jobs_get_an_error_object(worker):
    [err] = runsync(worker, {"something": "else"})
    assert "openai_route" in err["error"]["message"]
    [err] = runsync(worker, {"openai_route": "/v1/chat/completions", "openai_input": {"max_tokens": 2}})
    assert err["error"]["code"] == 400 and "messages" in err["error"]["message"]
    [err] = runsync(worker, {"openai_route": "/v1/nothing-here", "openai_input": {}})
    assert err["error"]["code"] == 404
    [err] = runsync(worker, {"prompt": "Hi", "sampling_params": {"max_tokens": 2, "beam_width": 3}})
    assert "beam_width" in err["error"]["message"]
    [err] = runsync(worker, {"prompt": "Hi", "sampling_params": {"max_tokens": 100000}})
    assert err["error"]["code"] == 400
    [err] = runsync(worker, {"messages": "not a list", "stream": "yes"})
    assert err["error"]["param"] == "stream"
    # the worker still serves afterwards
    [ok] = runsync(worker, {"prompt": "Hi", "sampling_params": {"max_tokens": 2}})
    assert ok["usage"]["output"] >= 1
