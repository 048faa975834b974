"""Publishing a built folder (a model, an adapter) all at once."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def publish(out_dir: Path, stamp_name: str, stamp: dict[str, Any], fill: Callable[[Path], None]) -> Path:
    """Build the folder aside with ``fill`` and rename it into ``out_dir``, so that a crash or a
    concurrent reader never sees half of it; ``stamp`` (JSON) says what was built."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fill(work)
        (work / stamp_name).write_text(json.dumps(stamp))
        work.chmod(0o755)  # mkdtemp makes it private; what is built here is meant to be shared
        for f in work.iterdir():
            f.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
