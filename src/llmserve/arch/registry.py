"""Architecture name -> model family and, per framework, the class that implements it.

Plugins fill the table through the ``llmserve_model_architectures`` hook; the built-in torch and
JAX plugins register theirs the same way. The table is plain data: implementations are
``"module:attr"`` (or ``"module"``) strings imported only when a backend asks, so building it
imports neither torch nor jax.

The backends call the module-level functions (``model_family``, ``is_encoder``,
``torch_model_class``, ``implementation``), which read the process's plugins
(``llmserve.plugins.load_plugins().architectures()``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from llmserve.errors import LLMServeError, PluginError

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")


class UnsupportedModelError(LLMServeError):
    """The model's architecture has no implementation here."""

    status = 400
    type = "unsupported_model"


@dataclass(slots=True)
class Architecture:
    """One HF architecture: its family, whether it is an encoder, and who implements it.

    ``implementations`` maps a framework ("torch", "jax", or a third party's) to an import path
    or the object itself; ``plugins`` records which plugin registered the family (key "") and
    each implementation.
    """

    name: str
    family: str
    encoder: bool
    implementations: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)


class ArchitectureRegistry:
    """The architectures every loaded plugin registered, merged by name."""

    def __init__(self) -> None:
        self._archs: dict[str, Architecture] = {}

    def add(
        self, plugin: str, architecture: str, family: str, *, encoder: bool = False, **impls: Any
    ) -> None:
        """Record one registration. Two plugins may register the same architecture (say torch and
        JAX implementations) when they agree on family and encoder; each framework once."""
        if not isinstance(architecture, str) or not architecture:
            raise PluginError(f"plugin {plugin!r} registered an architecture with an empty name")
        if not isinstance(family, str) or not family:
            raise PluginError(f"plugin {plugin!r} registered architecture {architecture!r} without a family")
        for framework, impl in impls.items():
            if impl is None or (isinstance(impl, str) and not _IMPORT_PATH.match(impl)):
                raise PluginError(
                    f"plugin {plugin!r} registered architecture {architecture!r} with {framework}={impl!r}; "
                    "give 'module:Class', 'module' or the object itself"
                )
        arch = self._archs.get(architecture)
        if arch is None:
            arch = self._archs[architecture] = Architecture(architecture, family, bool(encoder))
            arch.plugins[""] = plugin
        elif (arch.family, arch.encoder) != (family, bool(encoder)):
            raise PluginError(
                f"architecture {architecture!r}: plugin {arch.plugins['']!r} registered family "
                f"{arch.family!r} (encoder={arch.encoder}) and plugin {plugin!r} family {family!r} "
                f"(encoder={bool(encoder)})"
            )
        for framework, impl in impls.items():
            if framework in arch.implementations:
                raise PluginError(
                    f"duplicate {framework} implementation of architecture {architecture!r}: registered "
                    f"by plugin {arch.plugins[framework]!r} and by plugin {plugin!r}"
                )
            arch.implementations[framework] = impl
            arch.plugins[framework] = plugin

    def __contains__(self, architecture: object) -> bool:
        return architecture in self._archs

    def __len__(self) -> int:
        return len(self._archs)

    def names(self) -> list[str]:
        """Every registered architecture, sorted."""
        return sorted(self._archs)

    def get(self, architecture: str) -> Architecture:
        """The entry for ``architecture``; UnsupportedModelError names the supported ones."""
        arch = self._archs.get(architecture)
        if arch is None:
            supported = ", ".join(self.names()) or "none (no plugin registered any)"
            raise UnsupportedModelError(
                f"model architecture {architecture!r} is not supported; supported architectures: {supported}"
            )
        return arch

    def family(self, architecture: str) -> str:
        return self.get(architecture).family

    def is_encoder(self, architecture: str) -> bool:
        return self.get(architecture).encoder

    def implementation(self, architecture: str, framework: str) -> Any:
        """The object implementing ``architecture`` in ``framework``, imported on first use."""
        arch = self.get(architecture)
        impl = arch.implementations.get(framework)
        if impl is None:
            have = ", ".join(sorted(arch.implementations)) or "none"
            raise UnsupportedModelError(
                f"model architecture {architecture!r} has no {framework} implementation (implemented in: {have})"
            )
        if isinstance(impl, str):
            module_name, _, attr = impl.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
            arch.implementations[framework] = impl = obj
        return impl


def architectures() -> ArchitectureRegistry:
    """The registry of the process's plugins (loaded once)."""
    from llmserve.plugins import load_plugins

    return load_plugins().architectures()


def model_family(architecture: str) -> str:
    """The family of ``architecture``; UnsupportedModelError names the supported ones."""
    return architectures().family(architecture)


def is_encoder(architecture: str) -> bool:
    """Whether ``architecture`` produces embeddings rather than next-token logits."""
    return architectures().is_encoder(architecture)


def implementation(architecture: str, framework: str) -> Any:
    """The ``framework`` implementation of ``architecture`` (imported lazily)."""
    return architectures().implementation(architecture, framework)


def torch_model_class(architecture: str) -> type:
    """The torch module class implementing ``architecture`` (imported lazily)."""
    return implementation(architecture, "torch")
