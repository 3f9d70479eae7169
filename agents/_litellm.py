"""Import LiteLLM with offline-safe defaults; every user of litellm in expertgraph comes here."""

from __future__ import annotations

import os
from types import ModuleType

from expertgraph.core.errors import MissingDependencyError


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
