"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s serve`, `nox -s bench`,
`nox -s bench_throughput`, `nox -s fuzz`, `nox -s slow`, `nox -s soak`, `nox -s engine_process`."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

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
def bench_throughput(session: nox.Session) -> None:
    """The offline engine: `llmserve bench throughput` against transformers generate."""
    session.install(TORCH, "-e", ".[test]")
    session.run("llmserve", "bench", "throughput", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """`llmserve bench serve` against llama-server and `transformers serve --continuous-batching`.

    Each peer runs from its own environment, built once under $LLMSERVE_BENCH_CACHE (default
    .nox/_bench): llama-server from the llama.cpp sources vendored in the llama-cpp-python sdist,
    transformers in a venv of its own. Extra arguments go to `llmserve bench serve`
    (e.g. `nox -s bench -- --concurrency 1,8 --num-prompts 8 --output-len 64 --json out.json`).
    """
    session.install(TORCH, "-e", ".", "httpx")  # httpx: the benchmark's client
    cache = Path(os.environ.get("LLMSERVE_BENCH_CACHE", ".nox/_bench")).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    paths = session.run(
        "python", "-c", "from llmserve.sources import packs; "
        "print(packs.ensure_gguf('smollm2')); print(packs.ensure_model('smollm2'))",
        silent=True,
    )  # fmt: skip
    if paths is None:  # nox --install-only
        return
    gguf, model_dir = paths.strip().splitlines()[-2:]
    server = _llama_server(session, cache)
    args = ["--start-peer", f"llama-server={server} -m {gguf} --host 127.0.0.1 --port {{port}} "
            "-t 2 -np 64 -cb -c 32768"]  # fmt: skip
    transformers = _transformers_serve(session, cache)
    if transformers:
        # the dtype llmserve's "auto" picks on this CPU, so both run the same arithmetic; a KV cache of
        # 32k tokens like llama-server's (left to itself it took 14 GiB of RAM on a 24 GiB machine)
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        dtype = "bfloat16" if (" avx512_bf16" in flags or " amx_bf16" in flags) else "float32"
        args += ["--start-peer", f"transformers={transformers} serve {model_dir} --continuous-batching "
                 f"--device cpu --dtype {dtype} --cb-block-size 32 --cb-num-blocks 1024 "
                 "--host 127.0.0.1 --port {port}"]  # fmt: skip
    session.run("llmserve", "bench", "serve", "--model", "smollm2", *args, *session.posargs)


def _llama_server(session: nox.Session, cache: Path) -> Path:
    """llama-server built once from the llama.cpp sources in the llama-cpp-python sdist."""
    binary = cache / "llama.cpp" / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    sdist = cache / "sdist"
    session.run("python", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python",
                "-d", str(sdist))  # fmt: skip
    archive = sorted(sdist.glob("llama_cpp_python-*.tar.gz"))[-1]
    with tarfile.open(archive) as tar:
        tar.extractall(sdist, filter="data")
    source = sdist / archive.name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    if (cache / "llama.cpp").exists():
        shutil.rmtree(cache / "llama.cpp")
    shutil.move(source, cache / "llama.cpp")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = []
    if " amx_int8" in flags:
        # ggml's AMX matmul segfaults on its first Q4_1 batch on these machines (llama.cpp issue
        # 20824, no fix there): build for this CPU's AVX-512 options, AMX left out
        isa = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
               "-DGGML_BMI2=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
               "-DGGML_AVX512_BF16=ON"]  # fmt: skip
    with session.chdir(cache / "llama.cpp"):
        session.run("cmake", "-B", "build", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF",
                    "-DCMAKE_BUILD_TYPE=Release", *isa, external=True)  # fmt: skip
        session.run("cmake", "--build", "build", "--target", "llama-server", "-j2", external=True)
    return binary


def _transformers_serve(session: nox.Session, cache: Path) -> Path | None:
    """`transformers` in a venv of its own; None (with the reason) when it lacks `serve --continuous-batching`."""
    venv = cache / "transformers-venv"
    cli = venv / "bin" / "transformers"
    if not cli.exists():
        session.run("python", "-m", "venv", str(venv))
        session.run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", TORCH, "transformers[serving]",
                    external=True)  # fmt: skip
    try:
        usage = subprocess.run([str(cli), "serve", "--help"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        session.warn(f"skipping transformers serve: it does not start ({exc})")
        return None
    if usage.returncode != 0 or "--continuous-batching" not in usage.stdout:
        tail = (usage.stderr or usage.stdout).strip().splitlines()[-1:]
        session.warn(
            f"skipping transformers serve: no `serve --continuous-batching` in this version ({tail})"
        )
        return None
    return cli


@nox.session
def fuzz(session: nox.Session) -> None:
    """Schemathesis over /openapi.json: every phase, a few thousand cases (docs/RELIABILITY.md)."""
    session.install(TORCH, "-e", ".[test]")
    env = {"LLMSERVE_FUZZ_EXAMPLES": "60", "LLMSERVE_FUZZ_PHASES": "examples,coverage,fuzzing,stateful"}
    session.run("python", "-m", "pytest", "-s", "tests/test_fuzz.py", *session.posargs, env=env)


@nox.session
def engine_process(session: nox.Session) -> None:
    """The server-level suites again with each model's engine core in its own process."""
    session.install(TORCH, "-e", ".[test]")
    suites = [
        "tests/test_engine_process.py", "tests/test_server.py", "tests/test_server_policies.py",
        "tests/test_faults.py", "tests/test_load.py", "tests/test_structured_outputs.py",
        "tests/test_engine_metrics.py", *glob.glob("tests/test_openai_*.py"),
    ]  # fmt: skip
    session.run("python", "-m", "pytest", *suites, *session.posargs, env={"LLMSERVE_ENGINE_PROCESS": "1"})


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
