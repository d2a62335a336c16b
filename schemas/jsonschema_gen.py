"""Generates ``schemas/jsonschema/*.json`` from the models (``python -m schemas.jsonschema_gen``).

A unit test fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.events import EVENT_MODELS, CanonicalEvent

OUT_DIR = Path(__file__).parent / "jsonschema"


def render_all() -> dict[str, str]:
    files: dict[str, Any] = {}
    for model in EVENT_MODELS:
        name = model.__name__
        files[f"{name}.json"] = model.model_json_schema()
    files["CanonicalEvent.json"] = TypeAdapter(CanonicalEvent).json_schema()
    return {k: json.dumps(v, indent=2, sort_keys=True) + "\n" for k, v in files.items()}


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in render_all().items():
        (OUT_DIR / name).write_text(text)


if __name__ == "__main__":
    main()
