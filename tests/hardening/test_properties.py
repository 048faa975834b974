"""Properties of the cache key (checked by hypothesis): the same inputs always give the same scope, and
changing any one field gives another, so no tenant, style or sampling change can ever be served an
answer cached for something else. (The word filter's idempotence is in tests/gateway/test_safety_filter.py.)"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.prompting import Sampling, cache_scope
from gateway.styles import StyleRegistry

STYLES = StyleRegistry.load(None, "curator")
NAMES = [s.name for s in STYLES.all()]
text = st.text(max_size=12)
fields = st.fixed_dictionaries(
    {
        "tenant": text,
        "model": text,
        "adapter": text,
        "style": st.sampled_from(NAMES),
        "language": st.sampled_from(["zh", "en"]),
        "sampling": st.builds(
            Sampling,
            max_tokens=st.integers(1, 4096),
            temperature=st.floats(0, 2, allow_nan=False),
            top_p=st.floats(0.01, 1, allow_nan=False),
        ),
        "metadata": st.dictionaries(st.sampled_from(["title", "artist", "year"]), text, max_size=3),
        "request": st.none() | text,
        "options": st.tuples(st.booleans(), st.booleans()),
    }
)


def scope(f: dict[str, Any]) -> str:
    return cache_scope(**(f | {"style": STYLES.get(f["style"])}))


def changed(f: dict[str, Any], name: str, data: st.DataObject) -> dict[str, Any]:
    """``f`` with only field ``name`` changed to a value that really differs."""
    value = f[name]
    if name == "sampling":
        knob = data.draw(st.sampled_from(["max_tokens", "temperature", "top_p"]))
        step = {"max_tokens": 1, "temperature": 0.125, "top_p": -0.005}[knob]
        new = replace(value, **{knob: getattr(value, knob) + step})
    elif name == "style":
        new = data.draw(st.sampled_from([n for n in NAMES if n != value]))
    elif name == "language":
        new = "en" if value == "zh" else "zh"
    elif name == "options":
        new = (not value[0], value[1])
    elif name == "metadata":
        new = value | {"collection": "x"}
    elif name == "request":
        new = (value or "") + "!"
    else:
        new = value + "x"
    return f | {name: new}


@settings(max_examples=150, deadline=None)
@given(fields)
def test_cache_scope_is_deterministic(f: dict[str, Any]) -> None:
    again = dict(f, metadata=dict(reversed(list(f["metadata"].items()))))  # key order must not matter
    assert scope(f) == scope(again)


@settings(max_examples=300, deadline=None)
@given(
    fields,
    st.sampled_from(["tenant", "model", "adapter", "style", "language", "sampling", "metadata", "request", "options"]),
    st.data(),
)
def test_changing_any_field_changes_the_scope(f: dict[str, Any], name: str, data: st.DataObject) -> None:
    assert scope(changed(f, name, data)) != scope(f)
