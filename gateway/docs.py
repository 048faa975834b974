"""Documentation generated from the code, so it cannot drift: the configuration table."""

from __future__ import annotations

from gateway.config import Settings

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"


def _default(value: object) -> str:
    if value is None or value == "":
        return "(empty)"
    return f"`{value}`"


def config_table() -> str:
    rows = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        env = "HUAYU_" + name.upper()
        rows.append(f"| `{env}` | {_default(field.default)} | {field.description or ''} |")
    return "\n".join(rows)


def readme_section(readme: str) -> str:
    """The README's current table (between the markers)."""
    start = readme.index(BEGIN) + len(BEGIN)
    return readme[start : readme.index(END)].strip()
