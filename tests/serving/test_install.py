"""The serving venv as serving/install.sh leaves it."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import ROOT, require_serving_venv

pytestmark = pytest.mark.slow


def run_serving(code: str) -> str:
    done = subprocess.run([require_serving_venv(), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_torchvision_fix_is_lazy() -> None:
    # every interpreter in the venv runs the .pth line: it must not import torch by itself
    out = json.loads(
        run_serving(
            "import sys, json; print(json.dumps(['torch' in sys.modules, [type(f).__module__ for f in sys.meta_path]]))"
        )
    )
    torch_loaded, finders = out
    assert torch_loaded is False
    assert "_huayu_torchvision_fix" in finders  # the hook waits for `import torchvision`


def test_torchvision_imports_beside_the_cpu_torch() -> None:
    out = json.loads(
        run_serving(
            "import json, sys, torch, torchvision\n"
            "from torchvision.transforms.v2 import functional as F\n"
            "img = F.resize(torch.zeros(3, 64, 48), [32, 24])\n"
            "print(json.dumps([torch.version.cuda, list(img.shape), "
            "bool(torch._C._jit_get_schemas_for_operator('torchvision::nms')), "
            "[type(f).__module__ for f in sys.meta_path]]))"
        )
    )
    cuda, shape, has_nms_schema, finders = out
    assert cuda is None and shape == [3, 32, 24] and has_nms_schema
    assert "_huayu_torchvision_fix" not in finders  # it stepped aside after the first import


def test_cuda_only_audio_packages_are_gone_and_transformers_imports() -> None:
    out = run_serving(
        "import importlib.util as u, transformers, peft, serving; "
        "print([u.find_spec(m) is None for m in ('torchaudio', 'torchcodec')])"
    )
    assert out == "[True, True]"


def test_rerunning_the_installer_changes_nothing() -> None:
    done = subprocess.run(
        ["bash", "serving/install.sh", ".venv-serving"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already installed" in done.stdout and "serving venv ready" in done.stdout
    assert "installing" not in done.stdout and "removing" not in done.stdout
