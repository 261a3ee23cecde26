"""Plugin loading and a typed facade over the hooks.

Built-ins are listed in DEFAULT_PLUGINS as (short name, module) pairs and load exactly as
third-party plugins from the ``llmserve`` entry-point group do. ``LLMSERVE_PLUGINS``
(comma-separated allowlist) and ``LLMSERVE_DISABLE_PLUGINS`` (blocklist) choose which load; both
match a plugin's short name or its module path (``torch`` or ``llmserve.backends.torch.plugin``).

Load order, which is also the order every hook runs in: built-ins in DEFAULT_PLUGINS order, then
entry points sorted by name, then the (name, object) pairs passed to ``Plugins.load``. Each hook
is called once per plugin through ``pm.subset_hook_caller`` (pluggy's caller limited to that
plugin), so the core knows which plugin registered what, can name it in errors, and keeps one
plugin's failing shutdown from stopping the others.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from llmserve import hookspecs
from llmserve.arch.registry import ArchitectureRegistry
from llmserve.errors import ConfigError, LLMServeError, PluginError
from llmserve.plugin_kinds import KINDS

if TYPE_CHECKING:
    from llmserve.config import Config

DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("torch", "llmserve.backends.torch.plugin"),  # backends cpu, cuda; torch model classes
    ("jax", "llmserve.backends.jax.plugin"),  # backends jax, tpu; JAX model modules
    ("openai", "llmserve.protocols.openai.plugin"),  # OpenAI routes
    ("vllm", "llmserve.protocols.vllm.plugin"),  # vLLM's own routes
    ("audio", "llmserve.protocols.audio.plugin"),  # OpenAI's speech-to-text routes
    ("responses", "llmserve.protocols.responses.plugin"),  # OpenAI's Responses API
    ("anthropic", "llmserve.protocols.anthropic.plugin"),  # Anthropic's Messages routes
    ("webui", "llmserve.protocols.webui.plugin"),  # the web UI at /
    ("parsers", "llmserve.parsers.plugin"),  # tool-call and reasoning parsers
    ("bench", "llmserve.bench.plugin"),  # `llmserve bench`
)

ENTRY_POINT_GROUP = "llmserve"

log = logging.getLogger("llmserve")


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
    """Where a loaded plugin came from."""

    name: str
    distribution: str
    version: str
    module: str = ""


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
        self.info: dict[str, PluginInfo] = {}  # in load order
        self._registries: dict[str, dict[str, Registered]] = {}
        self._architectures: ArchitectureRegistry | None = None

    # --- loading ---------------------------------------------------------------------------------

    def wanted(self, *names: str) -> bool:
        """Whether the allow/block lists let a plugin known by any of ``names`` load."""
        given = {name for name in names if name}
        if given & self.deny:
            return False
        return self.allow is None or bool(given & self.allow)

    def register(
        self, plugin: object, name: str, distribution: str = "llmserve", version: str = "", module: str = ""
    ) -> None:
        """Register one plugin object (module or instance) under ``name``, unless the lists skip it."""
        module = module or getattr(plugin, "__name__", "")
        if not self.wanted(name, module):
            return
        if self.pm.has_plugin(name):
            if self.pm.get_plugin(name) is plugin:  # the same object again: nothing to do
                return
            other = self.info.get(name)
            raise PluginError(
                f"plugin name {name!r} from {distribution} is already taken by "
                f"{other.distribution if other else 'another plugin'}"
            )
        self.pm.register(plugin, name=name)
        self.info[name] = PluginInfo(name, distribution, version or _version(distribution), module)

    def load(self, extra: Iterable[tuple[str, object]] = (), files: Iterable[str | Path] = ()) -> Plugins:
        """Load built-ins, then entry points (sorted by name), then ``extra`` (name, object) pairs,
        then plugin ``files`` (``--tool-parser-plugin``); then check that every hook
        implementation matches a spec."""
        extra = [*extra, *((Path(f).stem, load_file(f)) for f in files)]
        for name, path in DEFAULT_PLUGINS:
            if not self.wanted(name, path):
                continue
            try:
                module = importlib.import_module(path)
            except ImportError as exc:
                raise PluginError(f"built-in plugin {name!r} ({path}) failed to import: {exc}") from exc
            self.register(module, name, module=path)
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            if not self.wanted(ep.name, ep.module):
                continue
            dist = ep.dist.name if ep.dist else "unknown"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must say who it is
                raise PluginError(f"plugin {ep.name!r} from {dist} failed to load: {exc}") from exc
            self.register(obj, ep.name, dist, ep.dist.version if ep.dist else "", ep.module)
        for name, obj in extra:
            self.register(obj, name, "local")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"unknown hook implementation: {exc}") from exc
        return self

    # --- calling hooks ---------------------------------------------------------------------------

    def _each(self, hook_name: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        """(plugin name, a hook caller for that plugin alone), in load order.

        subset_hook_caller drops the other plugins by attribute name, so hook functions must be
        named as their spec (pluggy's ``specname`` option is not supported here)."""
        implementers = {impl.plugin_name for impl in getattr(self.pm.hook, hook_name).get_hookimpls()}
        loaded = dict(self.pm.list_name_plugin())
        for name in self.info:
            if name in implementers:
                others = [obj for other, obj in loaded.items() if other != name]
                yield name, self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    @staticmethod
    def _call(plugin: str, hook_name: str, caller: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return caller(**kwargs)
        except LLMServeError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc

    # --- registries ------------------------------------------------------------------------------

    def _collect(self, hook_name: str, kind: str) -> dict[str, Registered]:
        if kind in self._registries:
            return self._registries[kind]
        check = KINDS[kind]
        found: dict[str, Registered] = {}
        for plugin, caller in self._each(hook_name):

            def register(name: str, obj: Any, _plugin: str = plugin, **extra: Any) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin!r} registered a {kind} with an empty name")
                if name in found:
                    raise PluginError(
                        f"duplicate {kind} {name!r}: registered by plugin {found[name].plugin!r} "
                        f"and by plugin {_plugin!r}"
                    )
                found[name] = Registered(kind, name, obj, _plugin, check(_plugin, name, obj, extra))

            self._call(plugin, hook_name, caller, register=register)
        self._registries[kind] = found
        return found

    def backends(self) -> dict[str, Registered]:
        """Backend name -> its Backend subclass; ``extra["auto_priority"]`` for ``--backend auto``."""
        return self._collect("llmserve_backends", "backend")

    def tool_parsers(self) -> dict[str, Registered]:
        """Tool parser name -> its ToolParser subclass."""
        return self._collect("llmserve_tool_parsers", "tool parser")

    def reasoning_parsers(self) -> dict[str, Registered]:
        """Reasoning parser name -> its ReasoningParser subclass."""
        return self._collect("llmserve_reasoning_parsers", "reasoning parser")

    def logits_processors(self) -> dict[str, Registered]:
        """Logits processor name -> its LogitsProcessor subclass (``--logits-processors``)."""
        return self._collect("llmserve_logits_processors", "logits processor")

    def protocols(self) -> dict[str, Registered]:
        """Protocol name -> blueprint or factory; ``extra["capabilities"]`` is a frozenset."""
        return self._collect("llmserve_protocols", "protocol")

    def architectures(self) -> ArchitectureRegistry:
        """Every registered model architecture (family, encoder, implementations per framework)."""
        if self._architectures is None:
            registry = ArchitectureRegistry()
            for plugin, caller in self._each("llmserve_model_architectures"):
                self._call(
                    plugin,
                    "llmserve_model_architectures",
                    caller,
                    register=functools.partial(registry.add, plugin),
                )
            self._architectures = registry
        return self._architectures

    def check(self) -> Plugins:
        """Build every registry now, so a bad plugin fails at start rather than mid-request."""
        self.tool_parsers(), self.reasoning_parsers(), self.logits_processors()
        self.protocols(), self.architectures(), self.backends()
        return self

    def auto_backend(self, config: Config) -> str:
        """``--backend auto``: among backends registered with an ``auto_priority``, the one with the
        highest priority whose ``is_available(config)`` is true (ties: load order)."""
        candidates = [reg for reg in self.backends().values() if reg.extra.get("auto_priority") is not None]
        candidates.sort(key=lambda reg: -reg.extra["auto_priority"])
        for reg in candidates:
            try:
                if reg.obj.is_available(config):
                    return reg.name
            except Exception as exc:  # a crashing probe means "not here", not a failed start
                log.warning(
                    "backend %s (plugin %s): availability check failed: %s", reg.name, reg.plugin, exc
                )
                continue
            log.info("--backend auto: %s is not available here", reg.name)
        tried = ", ".join(reg.name for reg in candidates) or "no backend registered an auto_priority"
        raise ConfigError(
            f"--backend auto: no backend is available here (tried {tried}); name one with --backend"
        )

    # --- lifecycle -------------------------------------------------------------------------------

    def add_cli(self, app: Any) -> None:
        """Let every plugin add its commands (``llmserve_cli``)."""
        for plugin, caller in self._each("llmserve_cli"):
            self._call(plugin, "llmserve_cli", caller, app=app)

    def serve_settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """What ``llmserve_serve_settings`` adds to ``given`` (only fields it left as None)."""
        from llmserve.config import Config

        found: dict[str, Any] = {}
        for plugin, caller in self._each("llmserve_serve_settings"):
            results = self._call(plugin, "llmserve_serve_settings", caller, given=dict(given))
            result: dict[str, Any] = {}
            for part in results or ():  # one plugin, one result (pluggy gives a list)
                if part is not None and not isinstance(part, dict):
                    raise PluginError(f"plugin {plugin!r}: llmserve_serve_settings must return a dict")
                result.update(part or {})
            unknown = sorted(set(result or {}) - set(Config.model_fields))
            if unknown:
                raise PluginError(f"plugin {plugin!r} gave unknown serve settings: {', '.join(unknown)}")
            found.update(result or {})
        return {key: value for key, value in found.items() if given.get(key) is None}

    def startup(self, context: Any) -> None:
        """``llmserve_startup`` in load order; an exception aborts start-up."""
        for _plugin, caller in self._each("llmserve_startup"):
            caller(context=context)

    def shutdown(self, context: Any, log: Callable[[str], None] | None = None) -> None:
        """``llmserve_shutdown`` on every plugin; one failing does not stop the others."""
        for plugin, caller in self._each("llmserve_shutdown"):
            try:
                caller(context=context)
            except Exception as exc:
                if log:
                    log(f"plugin {plugin!r} failed at shutdown: {type(exc).__name__}: {exc}")

    def describe(self) -> list[dict[str, Any]]:
        """One row per plugin, in load order: name, module, distribution, version and what it registered."""
        kinds = [
            self.backends(),
            self.tool_parsers(),
            self.reasoning_parsers(),
            self.logits_processors(),
            self.protocols(),
        ]
        archs = self.architectures()
        rows = []
        for name, info in self.info.items():
            plugin = self.pm.get_plugin(name)
            hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])
            registered = [f"{r.kind}:{r.name}" for reg in kinds for r in reg.values() if r.plugin == name]
            registered += [
                f"architecture:{arch}" for arch in archs.names() if name in archs.get(arch).plugins.values()
            ]
            rows.append(
                {
                    "name": name,
                    "module": info.module,
                    "distribution": info.distribution,
                    "version": info.version,
                    "hooks": hooks,
                    "registered": registered,
                }
            )
        return rows


def load_file(path: str | Path) -> object:
    """A plugin from a Python file (``--tool-parser-plugin PATH``, as vLLM's flag): the module
    itself when it has hook implementations, else an object registering its module-level
    ``TOOL_PARSERS`` / ``REASONING_PARSERS`` dicts (name -> parser class)."""
    path = Path(path).expanduser()
    spec = importlib.util.spec_from_file_location(f"llmserve_plugin_file_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise PluginError(f"--tool-parser-plugin: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the file is the user's: say which one failed
        raise PluginError(
            f"--tool-parser-plugin: {path} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if any(name in vars(module) for name in hookspecs.hook_names()):
        return module
    hooks = types.ModuleType(module.__name__)
    for hook, table in (
        ("llmserve_tool_parsers", "TOOL_PARSERS"),
        ("llmserve_reasoning_parsers", "REASONING_PARSERS"),
    ):
        parsers = dict(getattr(module, table, None) or {})

        def register_all(register, _parsers=parsers):
            for name, cls in _parsers.items():
                register(name, cls)

        register_all.__name__ = hook
        setattr(hooks, hook, hookspecs.hookimpl(register_all))
    return hooks


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


_loaded: Plugins | None = None
_lock = threading.Lock()


def load_plugins(
    env: dict[str, str] | None = None, *, fresh: bool = False, config: Config | None = None
) -> Plugins:
    """The process's plugins (built-ins and every installed entry-point plugin), loaded once.

    Later calls return the same object. Passing ``env`` (instead of ``os.environ``) or
    ``fresh=True`` builds a new, uncached manager, as ``Plugins(env).load()`` does. A ``config``
    naming a ``--tool-parser-plugin`` file adds it: the process's plugins are rebuilt with it
    (once), so later calls without ``config`` see it too."""
    global _loaded
    files = [config.tool_parser_plugin] if config is not None and config.tool_parser_plugin else []
    if env is not None or fresh:
        return Plugins(env).load(files=files)
    with _lock:
        loaded = _loaded
        if loaded is None or (files and not _has_files(loaded, files)):
            _loaded = loaded = Plugins().load(files=files)
        return loaded


def _has_files(plugins: Plugins, files: list[str]) -> bool:
    return all(Path(f).stem in plugins.info for f in files)
