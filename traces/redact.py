"""Secret redaction at the trace writer: secrets are replaced whole, never prefix-masked.

Four sources of secrets are recognised in every string of a record (and in mapping keys):

* the values this process uses as credentials, whatever holds them: each API expert's key at
  call time, the server's API keys, OTel header values (:func:`register_secret`, at least
  6 characters long);
* the values of environment variables whose name says they hold a secret (``*_API_KEY``,
  ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``, ``*_KEY``, ...), when at least 8 characters long;
* ``Bearer <token>`` / ``Basic <token>`` credentials (the scheme word is kept, the token goes);
* known key shapes: OpenAI ``sk-...``, Anthropic ``sk-ant-...``, AWS ``AKIA...``, GitHub
  ``ghp_``/``gho_``/``ghs_``/``github_pat_...``, Slack ``xox?-...``, Google ``AIza...``,
  Hugging Face ``hf_...``.

A mapping entry whose key names a credential (``api_key``, ``authorization``, ``token``,
``password``, ...) has its whole string value replaced as well.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
MIN_REGISTERED_LENGTH = 6
"""Shorter registered values are ignored: redacting them would redact ordinary words."""

# A cache-like process-wide registry: the credential values this process has used. Only
# ever grows; a version number lets each Redactor notice additions with one int comparison.
_REGISTERED: set[str] = set()
_REGISTRY_LOCK = threading.Lock()
_registry_version = 0


def register_secret(value: str) -> None:
    """Treat ``value`` as a secret in every sink of this process from now on.

    Call it with each value used as a credential (an API key, a bearer token, a header value)
    as soon as it is read. The registry is process-wide and only grows (a cache: nothing is
    ever unregistered); values shorter than :data:`MIN_REGISTERED_LENGTH` are ignored.
    """
    global _registry_version
    if not isinstance(value, str):
        return
    value = value.strip()
    if len(value) < MIN_REGISTERED_LENGTH:
        return
    with _REGISTRY_LOCK:
        if value not in _REGISTERED:
            _REGISTERED.add(value)
            _registry_version += 1


def _registered() -> tuple[int, frozenset[str]]:
    with _REGISTRY_LOCK:
        return _registry_version, frozenset(_REGISTERED)


_SECRET_ENV_NAME = re.compile(
    r"(?:^|_)(?:API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY|ACCESS_KEY)(?:_|$)"
    r"|_KEY$|^APIKEY$",
    re.IGNORECASE,
)
_SECRET_FIELD_NAMES = (
    r"api[_-]?key|x-api-key|authorization|proxy-authorization|token|access[_-]?token|"
    r"refresh[_-]?token|secret|client[_-]?secret|password|passwd|credentials?|cookie|set-cookie"
)
_SECRET_FIELD = re.compile(r"^(?:" + _SECRET_FIELD_NAMES + r")$", re.IGNORECASE)
# Ordered so the longer, more specific shapes win (sk-ant- before sk-).
_KEY_SHAPES = [
    r"sk-ant-[A-Za-z0-9_\-]{16,}",
    r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}",
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{20,}",
    r"github_pat_[A-Za-z0-9_]{20,}",
    r"xox[abposr]-[A-Za-z0-9\-]{10,}",
    r"AIza[0-9A-Za-z_\-]{30,}",
    r"hf_[A-Za-z0-9]{20,}",
]
_SHAPES = re.compile(r"(?<![A-Za-z0-9_\-])(?:" + "|".join(_KEY_SHAPES) + r")")
# A credential after an auth scheme word. The token must hold a digit, so prose such as
# "basic arithmetic" is left alone; real tokens and base64 user:password pairs have digits.
_AUTH_SCHEME = re.compile(
    r"\b([Bb]earer|BEARER|[Bb]asic|BASIC)(\s+)(?=[A-Za-z._~+/=\-]*[0-9])[A-Za-z0-9._~+/=\-]{8,}"
)
# The same patterns for JSON text, without their leading boundary checks: a lookbehind at
# the start of a pattern makes ``re`` try every position, while a leading literal lets it
# skip ahead. ``_json_boundary`` checks the start of each (rare) match instead.
_JSON_SHAPES = re.compile("(?:" + "|".join(_KEY_SHAPES) + ")")
_JSON_AUTH_SCHEME = re.compile(
    # Spelled out: alternatives that start with a literal let ``re`` scan for their first letter.
    r"(Bearer|bearer|BEARER|Basic|basic|BASIC)((?:\s|\\[nrt])+)"
    r"(?=[A-Za-z._~+/=\-]*[0-9])[A-Za-z0-9._~+/=\-]{8,}"
)
# A credential-named member with a string value, in compact JSON (``"api_key":"..."``).
_JSON_SECRET_MEMBER = re.compile(
    r'"((?:' + _SECRET_FIELD_NAMES + r'))":"((?:[^"\\]|\\.)+)"', re.IGNORECASE
)
# Lower-case substrings one of which every such member contains.
_MEMBER_HINTS = (
    'key":"',
    'token":"',
    'secret":"',
    "passw",
    'authorization":"',
    "credential",
    'cookie":"',
)
_AUTH_HINTS = ("earer", "EARER", "asic", "ASIC")


# Substrings one of which every key shape and auth scheme contains: a string with none of
# them needs no regex pass (most strings of a trace are model text).
_TRIGGERS = (
    "sk-",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "AIza",
    "hf_",
    "earer",
    "EARER",
    "asic",
    "ASIC",
)


@functools.lru_cache(maxsize=4096)  # a cache: variable names are few and their verdict fixed
def _is_secret_name(name: str) -> bool:
    return _SECRET_ENV_NAME.search(name) is not None


def secret_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of environment variables that hold secrets by their name."""
    env = os.environ if environ is None else environ
    return sorted(n for n in env if _is_secret_name(n))


class Redactor:
    """Replaces secrets in strings and nested JSON-like data.

    Environment values and the registered secrets (:func:`register_secret`) are read again
    on each :meth:`refresh` (the writer refreshes once per record), so a key exported or
    registered after the writer was created is still caught.
    """

    def __init__(
        self, *, environ: Mapping[str, str] | None = None, extra_secrets: list[str] | None = None
    ) -> None:
        self._environ = environ
        self._extra = [s for s in (extra_secrets or []) if len(s) >= MIN_SECRET_LENGTH]
        self._values: list[str] = []
        self._json_values: list[str] = []
        self._shortest = MIN_SECRET_LENGTH
        self._seen_env: dict[bytes, bytes] | None = None
        self._seen_registry = -1
        self.refresh()

    def refresh(self) -> None:
        """Re-read the secret values of the environment and the registry (a no-op while
        neither changed)."""
        version = _registry_version  # an int read: no lock needed to see a change
        if self._environ is None:
            # The writer refreshes before every record; comparing the process environment
            # with the copy seen last time is one C-level dict comparison, far cheaper than
            # re-scanning every variable name.
            current = getattr(os.environ, "_data", None)
            if current is not None and current == self._seen_env and version == self._seen_registry:
                return
            self._seen_env = dict(current) if current is not None else None
        version, registered = _registered()
        self._seen_registry = version
        env = os.environ if self._environ is None else self._environ
        values = {env[n] for n in secret_env_names(env) if len(env[n].strip()) >= MIN_SECRET_LENGTH}
        values.update(self._extra)
        values.update(registered)
        # Longest first, so a secret that contains another is removed whole.
        self._values = sorted(values, key=len, reverse=True)
        self._shortest = min((len(v) for v in self._values), default=MIN_SECRET_LENGTH)
        self._shortest = min(self._shortest, MIN_SECRET_LENGTH)
        # As they appear inside JSON strings (quotes, backslashes and controls escaped).
        self._json_values = [json.dumps(v, ensure_ascii=False)[1:-1] for v in self._values]

    def text(self, value: str) -> str:
        """The string with every secret replaced by ``[REDACTED]``."""
        if len(value) < self._shortest:
            return value
        for secret in self._values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if not any(t in value for t in _TRIGGERS):
            return value
        value = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", value)
        return _SHAPES.sub(REDACTED, value)

    def json_line(self, line: str) -> str:
        """Redact one line of compact JSON, as :meth:`data` would redact the value it encodes.

        Working on the encoded line spares a walk over the record: secrets are matched in
        their JSON-escaped form, and a credential-named member's string value goes whole.
        A key shape right after an escaped backslash followed by ``n`` (the text ``\\n``)
        is taken for one after a newline: the line may lose a little more, never less.
        """
        for secret in self._json_values:
            if secret in line:
                line = line.replace(secret, REDACTED)
        lowered = line.lower()
        if any(h in lowered for h in _MEMBER_HINTS):
            line = _JSON_SECRET_MEMBER.sub(_redact_member, line)
        if any(h in line for h in _AUTH_HINTS):
            line = _JSON_AUTH_SCHEME.sub(_redact_auth, line)
        return _JSON_SHAPES.sub(_redact_shape, line)

    def data(self, value: Any, *, key: str | None = None) -> Any:
        """Redact a JSON-like structure (dicts, lists, strings); other values pass through."""
        if isinstance(value, str):
            if key is not None and _SECRET_FIELD.match(key) and value and value != REDACTED:
                return REDACTED
            return self.text(value)
        if isinstance(value, dict):
            return {
                (self.text(k) if isinstance(k, str) else k): self.data(
                    v, key=k if isinstance(k, str) else None
                )
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value


# A cache: the one redactor of the sinks outside the trace writer (replies, CLI output, error
# messages); it refreshes itself from the environment and the registry on each use.
_SHARED: Redactor | None = None


def _shared() -> Redactor:
    global _SHARED
    if _SHARED is None:
        _SHARED = Redactor()
    _SHARED.refresh()
    return _SHARED


def redact_text(value: str) -> str:
    """``value`` with every secret this process knows replaced by ``[REDACTED]``: for text
    that leaves the process other than through a trace (a reply, CLI output, a log line)."""
    return _shared().text(value)


def redact_data(value: Any) -> Any:
    """:func:`redact_text` for a JSON-like structure (credential-named members go whole)."""
    return _shared().data(value)


def _redact_member(match: re.Match[str]) -> str:
    if match.group(2) == REDACTED:
        return match.group(0)
    return f'"{match.group(1)}":"{REDACTED}"'


def _json_boundary(text: str, start: int, glued: Callable[[str], bool]) -> bool:
    """Whether a match at ``start`` of JSON text begins a token: not ``glued`` to the
    character before it, or right after an escape such as ``\\n`` (whose letter is not text)."""
    if start == 0 or not glued(text[start - 1]):
        return True
    return start >= 2 and text[start - 2] == "\\" and text[start - 1] in "nrtbf"


_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _is_key_char(char: str) -> bool:  # the lookbehind of _SHAPES
    return char in _KEY_CHARS


def _is_word_char(char: str) -> bool:  # what ``\b`` of _AUTH_SCHEME counts as a word
    return char.isalnum() or char == "_"


def _redact_shape(match: re.Match[str]) -> str:
    if _json_boundary(match.string, match.start(), _is_key_char):
        return REDACTED
    return match.group(0)


def _redact_auth(match: re.Match[str]) -> str:
    if _json_boundary(match.string, match.start(), _is_word_char):
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    return match.group(0)
