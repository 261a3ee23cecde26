"""Plugin loading and a typed facade over the hooks.

Built-ins are listed in DEFAULT_PLUGINS and load exactly as third-party plugins from the
``llmserve`` entry-point group do. ``LLMSERVE_PLUGINS`` (comma-separated allowlist) and
``LLMSERVE_DISABLE_PLUGINS`` (blocklist) choose which load; both match plugin names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from llmserve import hookspecs
from llmserve.errors import PluginError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "llmserve.backends.torch.plugin",
    "llmserve.backends.jax.plugin",
    "llmserve.protocols.openai.plugin",
    "llmserve.protocols.vllm.plugin",
)

ENTRY_POINT_GROUP = "llmserve"


@dataclass(frozen=True, slots=True)
class Registered:
    """One object a plugin registered: its kind, name, the object and who registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    distribution: str
    version: str


def _split_env(value: str | None) -> set[str] | None:
    if not value:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class Plugins:
    """The plugin manager plus the registries filled by the registration hooks."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.pm = pluggy.PluginManager("llmserve")
        self.pm.add_hookspecs(hookspecs)
        self.allow = _split_env(env.get("LLMSERVE_PLUGINS"))
        self.deny = _split_env(env.get("LLMSERVE_DISABLE_PLUGINS")) or set()
        self.info: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, Registered]] = {}

    # --- loading ---------------------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        if name in self.deny:
            return False
        return self.allow is None or name in self.allow

    def register(self, plugin: object, name: str, distribution: str = "llmserve", version: str = "") -> None:
        """Register one plugin object (module or instance) under ``name``."""
        if not self._wanted(name):
            return
        if self.pm.has_plugin(name):
            other = self.info.get(name)
            raise PluginError(
                f"plugin name {name!r} from {distribution} is already taken by "
                f"{other.distribution if other else 'another plugin'}"
            )
        self.pm.register(plugin, name=name)
        self.info[name] = PluginInfo(name, distribution, version or _version(distribution))

    def load(self, extra: Iterable[tuple[str, object]] = ()) -> Plugins:
        """Load built-ins, then entry points, then ``extra`` (name, object) pairs; check hooks."""
        for path in DEFAULT_PLUGINS:
            if self._wanted(path):
                try:
                    module = importlib.import_module(path)
                except ImportError as exc:
                    raise PluginError(f"built-in plugin {path!r} failed to import: {exc}") from exc
                self.register(module, path)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if not self._wanted(ep.name):
                continue
            dist = ep.dist.name if ep.dist else "unknown"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must say who it is
                raise PluginError(f"plugin {ep.name!r} from {dist} failed to load: {exc}") from exc
            self.register(obj, ep.name, dist, ep.dist.version if ep.dist else "")
        for name, obj in extra:
            self.register(obj, name, "local")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"unknown hook implementation: {exc}") from exc
        return self

    # --- registries ------------------------------------------------------------------------------

    def _collect(self, hook_name: str, kind: str) -> dict[str, Registered]:
        if kind in self._registries:
            return self._registries[kind]
        found: dict[str, Registered] = {}
        hook = getattr(self.pm.hook, hook_name)
        # get_hookimpls() lists implementations in registration order: built-ins first.
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name

            def register(name: str, obj: Any, _plugin: str = plugin, **extra: Any) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin!r} registered a {kind} with an empty name")
                if name in found:
                    raise PluginError(
                        f"duplicate {kind} {name!r}: registered by plugin {found[name].plugin!r} "
                        f"and by plugin {_plugin!r}"
                    )
                found[name] = Registered(kind, name, obj, _plugin, extra)

            impl.function(**{arg: register for arg in impl.argnames})
        self._registries[kind] = found
        return found

    def backends(self) -> dict[str, Registered]:
        return self._collect("llmserve_backends", "backend")

    def tool_parsers(self) -> dict[str, Registered]:
        return self._collect("llmserve_tool_parsers", "tool parser")

    def reasoning_parsers(self) -> dict[str, Registered]:
        return self._collect("llmserve_reasoning_parsers", "reasoning parser")

    def protocols(self) -> dict[str, Registered]:
        return self._collect("llmserve_protocols", "protocol")

    # --- lifecycle -------------------------------------------------------------------------------

    def add_cli(self, app: Any) -> None:
        self.pm.hook.llmserve_cli(app=app)

    def startup(self, state: Any) -> None:
        self.pm.hook.llmserve_startup(state=state)

    def shutdown(self, state: Any, log: Callable[[str], None] | None = None) -> None:
        for impl in self.pm.hook.llmserve_shutdown.get_hookimpls():
            try:
                impl.function(**{arg: state for arg in impl.argnames})
            except Exception as exc:  # one failing plugin must not block the others
                if log:
                    log(f"plugin {impl.plugin_name!r} failed at shutdown: {exc}")

    def describe(self) -> list[dict[str, Any]]:
        """One row per plugin: name, distribution, version and what it registered."""
        kinds = [self.backends(), self.tool_parsers(), self.reasoning_parsers(), self.protocols()]
        rows = []
        for name, info in self.info.items():
            plugin = self.pm.get_plugin(name)
            hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])
            registered = [f"{r.kind}:{r.name}" for reg in kinds for r in reg.values() if r.plugin == name]
            rows.append(
                {
                    "name": name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "hooks": hooks,
                    "registered": registered,
                }
            )
        return rows


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def load_plugins(env: dict[str, str] | None = None) -> Plugins:
    """Build a plugin manager with the built-ins and every installed entry-point plugin."""
    return Plugins(env).load()
