from pathlib import Path

from gateway.config import Settings
from gateway.docs import config_table, readme_section

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_section(readme) == config_table(), "run `huayu config-table` and paste it into README.md"


def test_every_setting_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_readme_names_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme
