# One vLLM process for the whole session, shared with tests/e2e (reference counted there).
from tests.e2e.conftest import vllm_server

__all__ = ["vllm_server"]
