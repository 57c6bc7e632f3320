"""The committed OpenAPI document: ``python -m starter.api.spec`` rewrites
``starter/api/openapi.json`` from the app; ``--check`` exits 1 if it has drifted."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from starter.api.app import create_app
from taskomatic.settings import Settings

SPEC_FILE = Path(__file__).with_name("openapi.json")
REGENERATE = "python -m starter.api.spec"


def current_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app (independent of the local settings)."""
    settings = Settings(_env_file=None)
    spec: dict[str, Any] = create_app(settings).openapi()
    return spec


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render(current_spec())
    if "--check" in args:
        if not SPEC_FILE.exists() or SPEC_FILE.read_text() != text:
            print(f"{SPEC_FILE} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    SPEC_FILE.write_text(text)
    print(f"wrote {SPEC_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
