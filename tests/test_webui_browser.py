"""The web UI in a real browser: Playwright driving the system's headless Chromium (Debian's
`chromium` package, installed by .ci/run) against a real server with SmolLM2, a tiny second chat
model, MiniLM and whisper-tiny.en, behind an API key.

Screenshots of each view land in the test's artifact folder (printed); with
LLMSERVE_UPDATE_SCREENSHOTS=1 they are also written to docs/images/ for the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess
from test_multi_model import make_tiny_qwen2

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEY = "sk-webui"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS_IMAGES = Path(__file__).parent.parent / "docs" / "images"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LLMSERVE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def ui_server(smollm2_dir, minilm_dir, tmp_path_factory):
    from llmserve.sources import packs

    packs.ensure_model("whisper-tiny.en")
    tiny = tmp_path_factory.mktemp("tiny-qwen2")
    make_tiny_qwen2(tiny, smollm2_dir)
    shutil.copy(smollm2_dir / "chat_template.jinja", tiny / "chat_template.jinja")
    proc = ServerProcess(
        str(smollm2_dir), f"tiny={tiny}", f"mini={minilm_dir}", "stt=whisper-tiny.en",
        "--served-model-name", SMOL, "--embedding-model", "none", "--api-key", KEY,
        "--max-model-len", "1024", "--kv-cache-space", "0.5",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser():
    binary = chromium_path()
    if binary is None:
        pytest.skip(
            "no Chromium on this machine (apt-get install -y chromium); set LLMSERVE_CHROMIUM to its path"
        )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("webui-screenshots")
    print(f"web UI screenshots: {path}")
    return path


@pytest.fixture
def page(browser, ui_server):
    """A fresh browser context (empty local storage) with the API key saved, on the chat view."""
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.add_init_script(
        f"localStorage.getItem('llmserve.apiKey') || localStorage.setItem('llmserve.apiKey', '{KEY}')"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(ui_server.url + "/")
    page.wait_for_function("document.querySelector('#chat-model').options.length >= 2")
    page.fill("#max-tokens", "24")
    page.fill("#temperature", "0")
    yield page
    context.close()
    assert errors == []


def shoot(page, artifacts: Path, name: str) -> None:
    path = artifacts / f"webui-{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("LLMSERVE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGES / f"webui-{name}.png"))


def metric(server, name: str, model: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    pattern = rf'^llmserve:{name}\{{(?:[^}}]*,)?model_name="{re.escape(model)}"(?:,[^}}]*)?\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def running(server) -> int:
    status = httpx.get(server.url + "/v1/status", headers=AUTH, timeout=10).json()
    return sum(m.get("num_running", 0) + m.get("num_waiting", 0) for m in status["models"])


def send(page, text: str) -> None:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")


def last_stats(page) -> str:
    """The statistics line of the last answer, once complete; fails on an error shown instead."""
    last = f".msg.assistant:nth-child({page.locator('.msg').count()})"
    page.wait_for_selector(f"{last} .stats, {last} .error", timeout=90_000)
    error = page.locator(f"{last} .error")
    assert error.count() == 0, error.inner_text()
    return page.locator(".msg.assistant .stats").last.inner_text()


STATS = re.compile(r"(\d+) prompt · (\d+) completion tokens")


def test_the_api_key_is_asked_for_and_then_used(browser, ui_server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(ui_server.url + "/")
    notice = page.get_by_role("alert")
    sync_api.expect(notice).to_contain_text("API key")
    assert page.locator("#chat-model option").count() == 0
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    page.wait_for_function("document.querySelector('#chat-model').options.length >= 2")
    assert page.locator("#chat-model option").all_inner_texts() == [SMOL, "tiny"]
    assert page.locator("#notice").is_hidden()
    context.close()


def test_chat_streams_multi_turn_and_is_kept(page, ui_server, artifacts):
    page.fill("#system-prompt", "You are a terse assistant.")
    before = metric(ui_server, "generation_tokens_total", SMOL)
    send(page, "What is the capital of France?")
    answer = page.locator(".msg.assistant .content").last
    sync_api.expect(page.get_by_role("button", name="Stop")).to_be_visible()
    seen = set()
    while page.locator("#stop").is_visible():  # the answer grows chunk by chunk while streaming
        seen.add(len(answer.inner_text()))
        page.wait_for_timeout(30)
    assert len({n for n in seen if n > 0}) >= 3, seen
    first = STATS.search(last_stats(page))
    assert re.search(
        r"completion tokens · [\d.]+ tok/s · TTFT [\d.]+ s · finish: (stop|length)", last_stats(page)
    )
    prompt1, completion1 = int(first.group(1)), int(first.group(2))
    assert metric(ui_server, "generation_tokens_total", SMOL) - before == completion1
    assert "Paris" in answer.inner_text()
    send(page, "And of Italy?")
    second = STATS.search(last_stats(page))
    assert int(second.group(1)) > prompt1 + completion1  # the whole conversation was sent
    shoot(page, artifacts, "chat")
    page.reload()
    page.wait_for_selector(".msg.assistant .stats")
    assert page.locator(".msg").count() == 4
    assert page.get_by_role("button", name="What is the capital of France?", exact=True).count() == 1
    assert page.input_value("#system-prompt") == "You are a terse assistant."


def test_stop_aborts_the_request_on_the_server(page, ui_server):
    page.fill("#max-tokens", "900")
    send(page, "Count from 1 to 500, one number per line.")
    answer = page.locator(".msg.assistant .content").last
    sync_api.expect(answer).not_to_have_text("", timeout=60_000)
    status = httpx.get(ui_server.url + "/v1/status", headers=AUTH, timeout=10).json()
    (request,) = status["models"][0]["requests"]
    assert request["phase"] == "generation" and request["generated_tokens"] < 400
    page.get_by_role("button", name="Stop").click()
    stopped = time.monotonic()
    while running(ui_server) and time.monotonic() < stopped + 10:
        time.sleep(0.1)
    assert running(ui_server) == 0
    assert time.monotonic() - stopped < 5  # aborted, not run to its 900 tokens
    generated = metric(ui_server, "generation_tokens_total", SMOL)
    time.sleep(1)
    assert metric(ui_server, "generation_tokens_total", SMOL) == generated  # nothing runs on
    assert "stopped" in last_stats(page)
    sync_api.expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_switching_model(page, ui_server):
    before = metric(ui_server, "generation_tokens_total", "tiny")
    page.get_by_role("combobox", name="Model", exact=True).select_option("tiny")
    send(page, "Hello there")
    stats = STATS.search(last_stats(page))
    assert stats, last_stats(page)
    assert page.locator(".msg.assistant .role").last.inner_text().lower() == "assistant · tiny"
    assert metric(ui_server, "generation_tokens_total", "tiny") - before == int(stats.group(2))
    page.reload()  # the choice is remembered
    page.wait_for_function("document.querySelector('#chat-model').options.length >= 2")
    assert page.input_value("#chat-model") == "tiny"


def _load(server, stop: threading.Event) -> None:
    def one():
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as http:
            while not stop.is_set():
                body = {"model": SMOL, "prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True}
                http.post("/v1/completions", json=body)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(timeout=120)


def test_dashboard_plots_follow_the_load(page, ui_server, artifacts):
    page.get_by_role("tab", name="Dashboard").click()
    panel = page.locator(f'.model-panel[data-model="{SMOL}"]')
    sync_api.expect(panel).to_be_visible()
    assert page.locator(".model-panel").count() == 4  # one per served model
    throughput = panel.locator('.plot[data-title="Throughput (tok/s)"]')
    sync_api.expect(throughput).to_have_attribute("data-points", re.compile(r"[2-9]|\d\d"))
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=(ui_server, stop))
    loader.start()
    try:
        panel.locator("td[data-phase]").first.wait_for(timeout=60_000)  # requests in flight, with phase
        page.wait_for_function(
            """model => {
                const p = document.querySelector(`.model-panel[data-model="${model}"]`);
                const v = (title, s) => Number(p.querySelector(`.plot[data-title="${title}"] [data-series="${s}"]`).dataset.value || 0);
                return v("Throughput (tok/s)", "generation") > 0 && v("Queue", "running") > 0;
            }""",
            arg=SMOL,
            timeout=90_000,
        )
        page.wait_for_function(
            """model => {
                const p = document.querySelector(`.model-panel[data-model="${model}"]`);
                const s = p.querySelector('.plot[data-title="Inter-token latency"] [data-series="p50"]');
                return Number(s.dataset.value) > 0;
            }""",
            arg=SMOL,
            timeout=90_000,
        )
        shoot(page, artifacts, "dashboard")
        points = int(throughput.get_attribute("data-points"))
        page.wait_for_function(  # it keeps sampling
            "([el, n]) => Number(el.dataset.points) > n",
            arg=[throughput.element_handle(), points],
            timeout=30_000,
        )
        assert panel.locator('[data-key="done"]').inner_text() != "0"
    finally:
        stop.set()
        loader.join()
    ttft = panel.locator('.plot[data-title="Time to first token"] [data-series="p50"]')
    assert float(ttft.get_attribute("data-value")) > 0


def test_playground_embeddings_tokenize_and_transcription(page, ui_server, artifacts, tmp_path):
    import numpy as np
    from speech import SENTENCES, espeak, word_error_rate

    page.get_by_role("tab", name="Playground").click()
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "The stock market fell today."]
    page.get_by_label("Texts, one per line").fill("\n".join(texts))
    page.get_by_role("button", name="Compare").click()
    cells = page.locator(".heatmap td.heat")
    sync_api.expect(cells).to_have_count(9)
    shown = np.array([float(c) for c in cells.evaluate_all("cs => cs.map(c => c.dataset.sim)")]).reshape(3, 3)
    data = httpx.post(
        ui_server.url + "/v1/embeddings", headers=AUTH, json={"model": "mini", "input": texts}
    ).json()
    vectors = np.array([d["embedding"] for d in data["data"]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(shown, vectors @ vectors.T, atol=1e-3)
    assert shown[0, 1] > shown[0, 2]

    text = "Héllo wörld! Tokenizers split text 🙂 into pieces."
    page.get_by_role("textbox", name="Text", exact=True).fill(text)
    page.get_by_role("button", name="Tokenize").click()
    tokens = page.locator(".tokens .tok")
    tokens.first.wait_for()
    expected = httpx.post(
        ui_server.url + "/tokenize",
        headers=AUTH,
        json={"model": SMOL, "prompt": text, "add_special_tokens": False},
    ).json()
    assert tokens.count() == expected["count"]
    assert "".join(tokens.all_text_contents()) == text  # the pieces cover the text exactly
    assert [int(i) for i in tokens.evaluate_all("ts => ts.map(t => t.dataset.id)")] == expected["tokens"]

    clip = espeak(SENTENCES[0], tmp_path / "fox.wav")
    page.get_by_label("Audio file").set_input_files(str(clip))
    page.get_by_role("button", name="Transcribe").click()
    transcript = page.locator(".transcript")
    transcript.wait_for(timeout=60_000)
    with clip.open("rb") as f:
        direct = httpx.post(ui_server.url + "/v1/audio/transcriptions", headers=AUTH, data={"model": "stt"},
                            files={"file": f}, timeout=60).json()  # fmt: skip
    assert transcript.inner_text() == direct["text"].strip()
    assert word_error_rate(SENTENCES[0], transcript.inner_text()) <= 0.4
    shoot(page, artifacts, "playground")


def _axe_violations(page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(
        page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}}
    )
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in results.response["violations"]]


def test_accessibility(page, ui_server):
    pytest.importorskip("axe_playwright_python", reason="axe-playwright-python is not installed")
    tree = page.locator("body").aria_snapshot()
    for line in ('tab "Chat" [selected]', 'tab "Dashboard"', 'textbox "API key"', 'combobox "Model"',
                 'textbox "System prompt"', 'textbox "Message"', 'button "Send"', 'log "Conversation"'):  # fmt: skip
        assert line in tree, line
    page.fill("#chat-input", "first line")
    page.press("#chat-input", "Shift+Enter")  # a new line, not a send
    page.type("#chat-input", "second line")
    assert page.input_value("#chat-input") == "first line\nsecond line" and page.locator(".msg").count() == 0
    page.press("#chat-input", "Enter")
    last_stats(page)
    assert page.locator(".msg.user .content").inner_text() == "first line\nsecond line"
    assert _axe_violations(page) == []  # labels, names, contrast (wcag2aa color-contrast), ARIA use
    page.get_by_role("tab", name="Chat").focus()
    page.keyboard.press("ArrowRight")  # tabs move with the arrow keys
    sync_api.expect(page.get_by_role("tab", name="Dashboard")).to_have_attribute("aria-selected", "true")
    page.locator(".model-panel").first.wait_for()
    page.wait_for_timeout(1500)
    assert _axe_violations(page) == []
    page.keyboard.press("ArrowRight")
    page.get_by_role("button", name="Compare").click()
    page.locator(".heatmap").wait_for()
    assert _axe_violations(page) == []


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}  # fmt: skip


def test_markdown_reasoning_and_tool_calls(page, ui_server):
    html = page.evaluate(
        """async () => (await import("./ui/markdown.js")).renderMarkdown(
            "# Title\\n**bold** <img src=x onerror=alert(1)>\\n```python\\nprint(1 < 2)\\n```\\n- a\\n- b")"""
    )
    assert '<pre><code class="language-python" data-lang="python">print(1 &lt; 2)</code></pre>' in html
    assert "<strong>bold</strong>" in html and "<li>a</li><li>b</li>" in html and "<img" not in html

    # Tool calls for real: tool_choice "required" makes the server constrain SmolLM2 to a call.
    page.get_by_label("Tools (JSON list of OpenAI function tools, optional)").fill(json.dumps([WEATHER]))
    page.get_by_role("combobox", name="Tool choice").select_option("required")
    page.fill("#max-tokens", "60")
    send(page, "What is the weather in Paris?")
    assert "finish: tool_calls" in last_stats(page)
    (call,) = json.loads(page.locator(".tool-calls").inner_text())
    assert call["function"]["name"] == "get_weather" and isinstance(
        call["function"]["arguments"]["city"], str
    )

    # Reasoning: no reasoning model is available, so the server's stream with a reasoning parser
    # (both reasoning fields, as llmserve sends them) is replayed to the page.
    def chunk(delta, finish=None):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return (
            "data: "
            + json.dumps({"object": "chat.completion.chunk", "model": SMOL, "choices": [choice]})
            + "\n\n"
        )

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"reasoning": t, "reasoning_content": t}) for t in ("The user ", "says hi.")]
    events += [chunk({"content": t}) for t in ("Hello", "!")] + [chunk({}, "stop")]
    usage = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    events.append("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\ndata: [DONE]\n\n")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body="".join(events)))  # fmt: skip
    page.get_by_label("Tools (JSON list of OpenAI function tools, optional)").fill("")
    send(page, "hi")
    assert "9 prompt · 6 completion tokens" in last_stats(page)
    reasoning = page.locator(".msg.assistant").last.locator("details.reasoning")
    assert reasoning.get_attribute("open") is None  # folded
    reasoning.locator("summary").click()
    assert reasoning.locator(".reasoning-text").inner_text() == "The user says hi."
    assert page.locator(".msg.assistant .content").last.inner_text() == "Hello!"
