"""Word lists: files of terms, one a line, a file per category, and an action per category.

The shipped lists live in ``gateway/safety/lists/``; a folder of the same shape
(``<category>.txt``, ``allow.txt``, optional ``categories.toml``) adds a museum's own. In a
user file a line ``-term`` removes a shipped term of that category.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, cast, get_args

from gateway.errors import HuayuError
from gateway.safety.normalize import MASK, normalize

Action = Literal["allow", "mask", "block", "regenerate"]
ACTIONS: tuple[Action, ...] = get_args(Action)
# how far each action goes; a text with several hits gets the strongest
SEVERITY: dict[Action, int] = {"allow": 0, "mask": 1, "regenerate": 2, "block": 3}
ALLOW_FILE = "allow.txt"
CATEGORY_FILE = "categories.toml"
DEFAULT_ACTION: Action = "mask"
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


class WordListError(HuayuError):
    """A word list or its categories file cannot be used."""

    status = 500
    type = "server_error"
    code = "wordlist_invalid"


@dataclass
class WordLists:
    terms: dict[str, list[str]] = field(default_factory=dict)  # category -> terms as written
    actions: dict[str, Action] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)

    def action(self, category: str) -> Action:
        return self.actions.get(category, DEFAULT_ACTION)


def _key(term: str) -> str:
    # removal lines match a shipped term however either is spelled
    return normalize(term).text.replace(MASK, "")


def parse_terms(text: str, source: str) -> tuple[list[str], list[str]]:
    """Return (terms to add, terms to remove) from one file's text."""
    add: list[str] = []
    remove: list[str] = []
    for line in text.splitlines():
        term = line.strip()
        if not term or term.startswith("#"):
            continue
        target = remove if term.startswith("-") else add
        term = term[1:].strip() if term.startswith("-") else term
        if not _key(term):
            raise WordListError(
                f"Word list {source} has the line {line.strip()!r}, which has no letters or digits left once "
                "spaces and punctuation are ignored; a term needs at least one letter or digit."
            )
        target.append(term)
    return add, remove


def _parse_actions(text: str, source: str) -> dict[str, Action]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WordListError(f"{source} is not valid TOML: {e}.") from e
    table = data.get("categories", {})
    if not isinstance(table, dict):
        raise WordListError(f"{source}: [categories] must be a table of category tables.")
    actions: dict[str, Action] = {}
    for name, spec in table.items():
        action: Any = spec.get("action") if isinstance(spec, dict) else None
        if action not in ACTIONS:
            raise WordListError(
                f"{source}: category {name!r} has action {action!r}; accepted actions: {', '.join(ACTIONS)}."
            )
        actions[name] = cast(Action, action)
    return actions


def _read(entry: Traversable | Path, source: str) -> str:
    try:
        return entry.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WordListError(f"Cannot read word list {source}: {e}. Word lists are UTF-8 text files.") from e


def _merge(lists: WordLists, folder: Traversable | Path, label: str, user: bool) -> None:
    entries = sorted((e for e in folder.iterdir() if e.is_file()), key=lambda e: e.name)
    for entry in entries:
        if entry.name == CATEGORY_FILE:
            lists.actions.update(_parse_actions(_read(entry, f"{label}/{entry.name}"), f"{label}/{entry.name}"))
    for entry in entries:
        if not entry.name.endswith(".txt"):
            continue
        source = f"{label}/{entry.name}"
        add, remove = parse_terms(_read(entry, source), source)
        if remove and not user:
            raise WordListError(f"{source}: '-term' lines belong in a museum's own lists, not the shipped ones.")
        category = entry.name[: -len(".txt")]
        if entry.name == ALLOW_FILE:
            target = lists.allow
        elif _CATEGORY.match(category):
            target = lists.terms.setdefault(category, [])
        else:
            raise WordListError(
                f"{source}: a category file is named <category>.txt, the category in lower-case letters, "
                "digits, '_' or '-'."
            )
        if remove:
            gone = {_key(t) for t in remove}
            target[:] = [t for t in target if _key(t) not in gone]
        target.extend(add)


def load_wordlists(extra_dir: Path | None = None, *, shipped: bool = True) -> WordLists:
    lists = WordLists()
    if shipped:
        _merge(lists, resources.files("gateway.safety.lists"), "shipped", user=False)
    if extra_dir is not None:
        folder = Path(extra_dir)
        if not folder.is_dir():
            raise WordListError(
                f"The word list folder {folder} does not exist or is not a folder; it should hold "
                "<category>.txt files (and optionally allow.txt and categories.toml)."
            )
        _merge(lists, folder, str(folder), user=True)
    return lists
