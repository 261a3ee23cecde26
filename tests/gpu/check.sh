#!/usr/bin/env bash
# The cuda backend's first-GPU checklist (docs/PERFORMANCE.md) in one command, offline:
#
#   tests/gpu/check.sh OUTDIR [WHEELS] [checks.py options, e.g. --stages kernels,model]
#
# installs the wheels tests/gpu/wheels.sh put in WHEELS into a temporary directory (nothing is
# installed into the system), prints the environment, then runs tests/gpu/checks.py with a hard
# budget (CHECK_BUDGET seconds for the stages, 540 by default: the whole command ends within about
# 9.5 minutes). OUTDIR gets figures.json and checks.log. Exit status 0 when every stage passed.
set -uo pipefail
outdir=${1:?usage: tests/gpu/check.sh OUTDIR [WHEELS] [checks.py options]}
shift
wheels=${1:-}
[ $# -gt 0 ] && shift
budget=${CHECK_BUDGET:-540}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
log="$outdir/checks.log"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
{
    echo "== environment ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    uname -a
    if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not available"; fi
    if [ -n "$wheels" ] && compgen -G "$wheels/*.whl" > /dev/null; then
        echo "== installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
        python -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl \
            || echo "pip install failed: the stages that need these packages will say so"
    fi
} 2>&1 | tee -a "$log"
export PYTHONPATH="$root/src:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout 60 python - <<'PY' 2>&1 | tee -a "$log"
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu {i}: {p.name}, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
else:
    print("no CUDA device visible to torch")
PY
tokenizer=()
if [ -n "$wheels" ] && [ -f "$wheels/tokenizer/tokenizer.json" ]; then
    tokenizer=(--tokenizer "$(cd "$wheels/tokenizer" && pwd)")
fi
cd "$root"
timeout -k 10 $((budget + 30)) python tests/gpu/checks.py --out "$outdir" --budget "$budget" "${tokenizer[@]}" "$@"
rc=$?
[ $rc -eq 124 ] && echo "== checks.py ran past its hard limit; figures.json holds the stages that finished" | tee -a "$log"
exit $rc
