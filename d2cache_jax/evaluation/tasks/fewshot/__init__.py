"""Fixed few-shot example files shipped with the tasks."""

from __future__ import annotations

import json
import os
from typing import Any


def load_fewshot(name: str) -> list[dict[str, Any]]:
    """The examples of `<name>.json` in this folder."""
    with open(os.path.join(os.path.dirname(__file__), f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)
