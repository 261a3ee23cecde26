"""The web UI's routes: the page at / for browsers, the usual 404 for JSON clients and with
--disable-web-ui, assets reachable without the API key, and nothing loaded from elsewhere."""

from __future__ import annotations

import re
from importlib import resources

from llmserve.config import build_config
from llmserve.plugins import Plugins
from llmserve.server.app import create_app
from llmserve.server.context import ProtocolContext

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
KEY = "sk-ui"
STATIC = resources.files("llmserve.protocols.webui").joinpath("static")


def _client(**config):
    config = build_config(**config)
    plugins = Plugins({}).load()
    return create_app(config, ProtocolContext(config, plugins), plugins).test_client()


async def test_browsers_get_the_page_and_json_clients_the_usual_404():
    client = _client()
    page = await client.get("/", headers=BROWSER)
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = await page.get_data(as_text=True)
    assert 'src="/ui/app.js"' in html and "{{base}}" not in html
    anything = await client.get("/", headers={"Accept": "*/*"})  # curl's default
    assert anything.status_code == 200
    api = await client.get("/", headers={"Accept": "application/json"})
    assert api.status_code == 404
    assert (await api.get_json())["error"]["type"] == "NotFoundError"
    script = await client.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.content_type


async def test_disable_web_ui_leaves_root_unmounted():
    client = _client(disable_web_ui=True)
    assert (await client.get("/", headers=BROWSER)).status_code == 404
    assert (await client.get("/ui/app.js")).status_code == 404
    paths = (await (await client.get("/openapi.json")).get_json())["paths"]
    assert "/" not in paths


async def test_page_and_assets_need_no_key_but_the_data_routes_do():
    client = _client(api_key=KEY)
    assert (await client.get("/", headers=BROWSER)).status_code == 200
    assert (await client.get("/ui/style.css")).status_code == 200
    assert (await client.get("/v1/status")).status_code == 401
    assert (await client.get("/v1/status", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
    assert (await client.get("/uix")).status_code == 401  # only / and /ui/... are open


async def test_page_uses_the_root_path_for_its_assets():
    client = _client(root_path="/api")
    page = await client.get("/", headers=BROWSER, root_path="/api")
    html = await page.get_data(as_text=True)
    assert 'src="/api/ui/app.js"' in html and 'LLMSERVE_BASE = "/api/"' in html


def test_assets_load_nothing_from_elsewhere():
    files = [f for f in STATIC.iterdir() if f.name.endswith((".html", ".js", ".css"))]
    assert {f.name for f in files} >= {"index.html", "app.js", "chat.js", "dashboard.js", "style.css"}
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), f.name
        assert not re.search(r"""(import\s[^;]*from\s*|import\(|url\()\s*["']?(https?:)?//""", text), f.name
        assert 'fetch("http' not in text and "fetch('http" not in text, f.name
    assert sum(len(f.read_bytes()) for f in files) < 100_000  # small: no vendored libraries
