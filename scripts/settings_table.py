"""Print the README's configuration table from the settings classes.

    python scripts/settings_table.py            # print the table
    python scripts/settings_table.py --check    # fail if README.md is out of date
    python scripts/settings_table.py --write    # rewrite the table in README.md

Every environment variable a service reads comes from one typed settings
class; this keeps the README's table in step with them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from lodestar.runtime.settings import ServerSettings, ServiceSettings

# (section, module, class), in README order. The first lists the variables every
# service reads under one name (those with an alias); each service's own follow.
SETTINGS = (
    ("every service", "lodestar.runtime.settings", "ServiceSettings"),
    ("every service", "lodestar.runtime.settings", "ServerSettings"),
    ("every service", "lodestar.auth.settings", "TokenSettings"),
    ("embedding", "lodestar.services.embedding.settings", "EmbeddingSettings"),
    ("vector", "lodestar.services.vector.settings", "VectorSettings"),
    ("inference", "lodestar.services.inference.settings", "InferenceSettings"),
    ("gateway", "lodestar.services.gateway.settings", "GatewaySettings"),
    ("gateway", "lodestar.services.gateway.flows.settings", "FlowsSettings"),
)
BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def _env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    if isinstance(alias, str):
        return alias
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value: Any = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    else:
        value = field.default
    if value is None or value == "":
        return "—"
    if isinstance(value, dict | list | tuple | set | frozenset):
        return "(see description)" if value else "—"
    if "site-packages" in str(value):
        return "(the bundled model)"
    if isinstance(value, Path) and value.is_absolute():
        return "(see description)"
    return f"`{value}`"


def table() -> str:
    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    seen: set[str] = set()
    for section, module_name, class_name in SETTINGS:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError:
            continue
        if f"| **{section}** | | |" not in rows:
            rows.append(f"| **{section}** | | |")
        shared = cls is ServiceSettings or cls is ServerSettings
        for name, field in cls.model_fields.items():
            if shared and field.validation_alias is None:
                continue  # each service's own variable, listed under the service
            env = _env_name(cls, name, field)
            if env in seen:
                continue
            seen.add(env)
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{env}` | {_default(field)} | {description} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    generated = table()
    if "--check" not in argv and "--write" not in argv:
        print(generated)
        return 0
    path = Path(__file__).resolve().parent.parent / "README.md"
    readme = path.read_text()
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    if "--write" in argv:
        path.write_text(f"{readme[: start + len(BEGIN)]}\n{generated}\n{readme[end:]}")
        return 0
    current = readme[start + len(BEGIN) : end].strip()
    if current != generated.strip():
        print("README.md's configuration table is out of date: run `make readme`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
