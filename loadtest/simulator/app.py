"""The simulator's routes: vLLM's OpenAI-compatible API plus the test-control endpoints under /_sim."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loadtest.simulator.config import SimConfig
from loadtest.simulator.engine import ApiError, Simulator, json_response
from loadtest.simulator.metrics import SimMetrics
from loadtest.simulator.responses import Generation, Hang, fault_error, quiet_intended_drops, read_body


def create_app(config: SimConfig | None = None) -> Starlette:
    sim = Simulator(config or SimConfig())
    quiet_intended_drops()

    async def chat(request: Request) -> Response:
        try:
            body = await read_body(request)
            sim.requests.append(body)
            fault = sim.take_fault()
            if fault in ("503", "500"):
                return fault_error(fault)
            if fault == "hang":
                return Hang(sim)
            plan = sim.plan(body, drip=fault == "drip")
        except ApiError as e:
            return e.response
        return Generation(sim, plan, sim.config.reset_after if fault == "reset" else None)

    async def models(request: Request) -> Response:
        created, c = int(time.time()), sim.config
        perm = {"id": "modelperm-sim", "object": "model_permission", "created": created, "allow_model": True}

        def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
            data = {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": root}
            return {**data, "parent": parent, "max_model_len": c.max_model_len, "permission": [perm]}

        bases = [n for n in sim.served() if n not in sim.loras]
        cards = [card(n, n, None) for n in bases] + [card(n, p, c.model) for n, p in sim.loras.items()]
        return json_response({"object": "list", "data": cards})

    async def load_lora(request: Request) -> Response:
        try:
            body = await read_body(request)
        except ApiError as e:
            return e.response
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return ApiError(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.").response
        if name in sim.served() and name not in sim.loras:
            msg = f"The lora adapter '{name}' conflicts with a served base model."
            return ApiError(400, "InvalidUserInput", msg).response
        if name in sim.loras and body.get("load_inplace") is not True:
            msg = f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
            return ApiError(400, "InvalidUserInput", msg + "set 'load_inplace' to True.").response
        sim.loras[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", media_type="text/plain")

    async def unload_lora(request: Request) -> Response:
        try:
            name = (await read_body(request)).get("lora_name")
        except ApiError as e:
            return e.response
        if not isinstance(name, str) or not name:
            msg = "'lora_name' needs to be provided to unload a LoRA adapter."
            return ApiError(400, "InvalidUserInput", msg).response
        if sim.loras.pop(name, None) is None:
            return ApiError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.").response
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", media_type="text/plain")

    async def health(request: Request) -> Response:
        return Response(status_code=200 if sim.config.healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(sim.render_metrics(), media_type=SimMetrics.content_type)

    async def sim_config(request: Request) -> Response:
        if request.method == "POST":
            try:
                patch = await read_body(request)
                merged = SimConfig.model_validate({**sim.config.model_dump(), **patch})
            except ApiError as e:
                return e.response
            except ValidationError as e:
                msg = (
                    f"Invalid simulator config: {e.errors(include_url=False)}. Fields: {list(SimConfig.model_fields)}."
                )
                return ApiError(400, "BadRequestError", msg).response
            sim.apply(merged, touched=frozenset(patch))
        return json_response(sim.public_config())

    async def sim_reset(request: Request) -> Response:
        sim.release.set()
        sim.apply(sim.initial, reset=True)
        return json_response(sim.public_config())

    async def sim_requests(request: Request) -> Response:
        raw = request.query_params.get("limit", str(sim.config.record_limit))
        if not raw.isdigit():
            return ApiError(400, "BadRequestError", f"limit must be a non-negative integer, got {raw!r}.").response
        limit = int(raw)
        kept = list(sim.requests)
        return json_response({"object": "list", "data": kept[len(kept) - limit :] if limit else []})

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/load_lora_adapter", load_lora, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/_sim/config", sim_config, methods=["GET", "POST"]),
        Route("/_sim/reset", sim_reset, methods=["POST"]),
        Route("/_sim/requests", sim_requests, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.sim = sim
    return app
