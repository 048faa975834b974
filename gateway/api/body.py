"""JSON request bodies parsed by pydantic straight from the bytes, beside FastAPI's machinery.

The hot routes (chat completions, predict) carry a ~100 KB image in every body. FastAPI would
decode it with the standard json module and validate the Python objects afterwards; pydantic's own
JSON parser does both in one pass. The schema still appears in the OpenAPI document: a route names
its model in ``openapi_extra`` and ``document_bodies`` adds the model's schema to the components.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_DOCUMENTED: dict[str, type[BaseModel]] = {}


async def read_json(request: Request, model: type[M]) -> M:
    """The body as ``model``; a malformed one raises what FastAPI raises (rendered as a 400)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` with ``read_json``."""
    _DOCUMENTED[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def document_bodies(app: FastAPI) -> None:
    """Adds the schemas named by ``json_body`` to the app's OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _DOCUMENTED.items():
            own = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for sub, definition in own.pop("$defs", {}).items():
                components.setdefault(sub, definition)
            components.setdefault(name, own)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
