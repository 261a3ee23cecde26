"""transformers' table of its model modules, kept on disk between processes.

On every import, transformers 5.x builds the lazy-import table of its model packages by reading
all ~2,600 of their source files (``create_import_structure_from_path``): about 1 s of CPU in
every process that imports it, a server's start included. The table depends only on those files,
so it is kept in the cache directory under a key made of transformers' version and every file's
name, size and mtime: any change to the files rebuilds it. Where transformers has no such function
(4.x), or it is already imported, nothing changes.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import os
import pickle
import sys
import threading

TARGET = "transformers.utils.import_utils"
FUNCTION = "create_import_structure_from_path"
_busy = threading.local()


def install() -> None:
    """Cache the table from the next import of transformers on; idempotent."""
    if "transformers" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


class _Finder(importlib.abc.MetaPathFinder):
    """Finds transformers' import_utils once, wrapping its loader, then steps aside."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):  # get_source, get_filename...: the wrapped loader's
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        original = getattr(module, FUNCTION, None)
        if callable(original):
            setattr(module, FUNCTION, _cached(original))


def _cached(original):
    files: dict[str, str] = {}  # transformers asks for the models folder twice in one import

    def create_import_structure_from_path(module_path):
        if getattr(_busy, "on", False):  # its own recursion into subpackages
            return original(module_path)
        path = str(module_path)
        path = os.path.dirname(path) if os.path.isfile(path) else path
        try:
            file = files.get(path) or files.setdefault(path, _cache_file(path))
        except Exception:  # e.g. transformers without its package metadata
            return original(module_path)
        try:
            with open(file, "rb") as fh:
                return pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            pass
        _busy.on = True
        try:
            table = original(module_path)
        finally:
            _busy.on = False
        _store(file, table)
        return table

    create_import_structure_from_path.__wrapped__ = original
    return create_import_structure_from_path


def _cache_file(path: str) -> str:
    from importlib.metadata import version

    from llmserve.sources.packs import cache_dir

    digest = hashlib.sha256(f"{version('transformers')}\0{path}".encode())
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return str(cache_dir() / "transformers-index" / f"{digest.hexdigest()[:32]}.pickle")


def _store(file: str, table) -> None:
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        tmp = f"{file}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(table, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only cache: build it each time, as transformers does
