"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s serve`, `nox -s bench`, `nox -s fuzz`, `nox -s slow`,
`nox -s soak`."""

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


@nox.session
def fuzz(session: nox.Session) -> None:
    """Schemathesis over /openapi.json: every phase, a few thousand cases (docs/RELIABILITY.md)."""
    session.install(TORCH, "-e", ".[test]")
    env = {"LLMSERVE_FUZZ_EXAMPLES": "60", "LLMSERVE_FUZZ_PHASES": "examples,coverage,fuzzing,stateful"}
    session.run("python", "-m", "pytest", "-s", "tests/test_fuzz.py", *session.posargs, env=env)


@nox.session
def soak(session: nox.Session) -> None:
    """Ten minutes of mixed chat / completions / embeddings: RSS flat, latency steady."""
    session.install(TORCH, "-e", ".[test]")
    env = {"LLMSERVE_SOAK_S": "600"}
    session.run("python", "-m", "pytest", "-s", "tests/test_load.py", "-k", "soak", *session.posargs, env=env)


@nox.session
def slow(session: nox.Session) -> None:
    """The long scenario tests the normal suite leaves out (marked slow), the packs' included."""
    session.install(TORCH, "-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)
    session.run(
        "python", "-m", "pytest", "tests/test_protocol_packs.py", *session.posargs,
        env={"LLMSERVE_PACK_TESTS": "slow"},
    )  # fmt: skip
