"""Session-wide test settings: one thread for models, nothing reaches the network."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from openai_server import OpenAIServer

# Set before anything imports litellm, torch or the hub client.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def openai_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``OPENAI_API_KEY``: the OpenAI SDK refuses to run without one, even against a
    loopback server. Files of API tests use it for every test (``pytestmark``)."""
    key = f"sk-env-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


@pytest.fixture
def srv() -> Iterator[OpenAIServer]:
    """A loopback OpenAI-compatible server of its own for one test."""
    from openai_server import OpenAIServer

    with OpenAIServer() as server:
        yield server
