"""Callable experts for the resume tests: each asks its own loopback OpenAI-compatible server
(``tests/openai_server.py``, started by the test), so the server counts every call it saw.

The server's URL is in ``RESUME_SERVER_<NAME>``. Callables keep the killed and resumed
subprocesses light (no LiteLLM import); one test also runs real API experts.
"""

from __future__ import annotations

import os

import httpx


def _ask(name: str, prompt: str) -> str:
    url = os.environ[f"RESUME_SERVER_{name}"] + "/v1/chat/completions"
    body = {"model": name.lower(), "messages": [{"role": "user", "content": prompt}]}
    reply = httpx.post(url, json=body, timeout=30)
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["message"]["content"])


def ask_a(prompt: str) -> str:
    return _ask("A", prompt)


def ask_b(prompt: str) -> str:
    return _ask("B", prompt)
