"""Import LiteLLM with offline-safe defaults; every user of litellm in expertgraph comes here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from expertgraph.core.errors import MissingDependencyError

# LiteLLM's lists of logging callbacks: while all are empty, its post-call logging has no
# reader.
_CALLBACK_LISTS = (
    "callbacks",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
    "input_callback",
    "service_callback",
)
# Per-model answers from LiteLLM's bundled price map, which does not change while a process
# runs (a cache: the map is read once per model instead of on every call).
_UNPRICED: set[str] = set()


def import_litellm() -> ModuleType:
    """Return the ``litellm`` module, configured for offline, quiet use.

    Before the first import: use the bundled price map (otherwise litellm downloads one at
    import time) and production mode (otherwise it loads any ``.env`` file into the
    environment). Both are ``setdefault``: a user's explicit environment wins.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    try:
        import litellm
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("litellm", "api") from exc
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" prints on errors
    return litellm


def _internal_flag() -> ContextVar[bool] | None:
    try:
        from litellm._internal_context import is_internal_call
    except ImportError:  # another LiteLLM release: its logging runs as before
        return None
    return is_internal_call


@contextmanager
def without_unread_logging(litellm: Any) -> Iterator[None]:
    """Calls made inside skip LiteLLM's post-call logging while no callback is registered.

    That logging builds a standard logging payload for callbacks: a second cost calculation,
    a zero-cost diagnostic and several model-info lookups per call, read by nobody when the
    callback lists are empty. The reply's own cost (``_hidden_params["response_cost"]``) is
    computed before it and stays. A user who registers a LiteLLM callback gets it as before.
    Use it inside the task that makes the call (it sets a context variable). A LiteLLM
    ``Router``'s own deployment callbacks are no readers: they count only calls made through
    that router (its deployment ids), never ours.
    """
    flag = _internal_flag()
    if flag is None or _read_by_someone(litellm):
        yield
        return
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def _read_by_someone(litellm: Any) -> bool:
    """Whether a callback other than a LiteLLM Router's deployment bookkeeping is registered."""
    for name in _CALLBACK_LISTS:
        for callback in getattr(litellm, name, None) or ():
            # Looked up only now: a Router's registration imported it already.
            router = getattr(litellm, "Router", None)
            if router is None or not isinstance(getattr(callback, "__self__", None), router):
                return True
    return False


def priced(litellm: Any, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """LiteLLM's price of a call to ``model``, None when its price map does not know it.

    The models it does not know are remembered (a per-process cache): asking again would
    cost a failed lookup and an exception on every call.
    """
    if model in _UNPRICED:
        return None
    try:
        cost_in, cost_out = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # noqa: BLE001 - not in the price map
        _UNPRICED.add(model)
        return None
    return float(cost_in) + float(cost_out)
