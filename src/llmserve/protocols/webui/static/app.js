// The page: tabs, the API key, the served models; each view lives in its own module.

import { apiKey, notice, servedModels, setApiKey } from "./api.js";
import { initChat, setChatModels } from "./chat.js";
import { startDashboard, stopDashboard } from "./dashboard.js";
import { initPlayground, setPlaygroundModels } from "./playground.js";

const VIEWS = ["chat", "dashboard", "playground"];
const $ = (id) => document.getElementById(id);

function show(view, focus = false) {
  for (const name of VIEWS) {
    const on = name === view;
    const tab = $(`tab-${name}`);
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`view-${name}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (view === "dashboard") startDashboard();
  else stopDashboard();
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
}

async function refreshModels() {
  try {
    const models = await servedModels();
    notice("");
    setChatModels(models);
    setPlaygroundModels(models);
    document.body.dataset.models = models.map((m) => m.name).join(",");
  } catch (exc) {
    if (exc.status !== 401) notice(`Could not read the served models: ${exc.message}`);
  }
}

function init() {
  for (const name of VIEWS) $(`tab-${name}`).addEventListener("click", () => show(name));
  document.querySelector('[role="tablist"]').addEventListener("keydown", (event) => {
    const at = VIEWS.findIndex((n) => $(`tab-${n}`) === document.activeElement);
    if (at < 0 || !["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
    event.preventDefault();
    const next = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: VIEWS.length - 1 }[event.key];
    show(VIEWS[(next + VIEWS.length) % VIEWS.length], true);
  });
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    refreshModels();
  });
  initChat();
  initPlayground();
  refreshModels();
  const wanted = location.hash.slice(1);
  show(VIEWS.includes(wanted) ? wanted : "chat");
}

init();
