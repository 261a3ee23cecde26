"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s serve`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
# Pinned so pip takes the local CPU wheel instead of a multi-GB CUDA build on CPU-only machines.
TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    session.install(TORCH, "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session
def serve(session: nox.Session) -> None:
    session.install(TORCH, "-e", ".")
    session.run("llmserve", "serve", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install(TORCH, "-e", ".[test]")
    session.run("llmserve", "bench", "throughput", *session.posargs)
