"""Who may call the service: the tokens file, its scopes, and the check of a request's token.

``mlnb serve --tokens FILE`` reads one token a line::

    # SCOPE   TOKEN                                  [NAME]
    predict   3q2+7w...                              shop-frontend
    feedback  Xk9-1b...                              labeling-team

A request sends ``Authorization: Bearer TOKEN``; ``/invocations`` needs the
``predict`` scope and ``/feedback`` the ``feedback`` scope (feedback writes
the next model's training data, so it is a scope of its own). A token may be
listed on two lines, once per scope, with the same name.

Design decisions:

- **Constant time, every token.** The presented token's SHA-256 is compared
  with :func:`hmac.compare_digest` against the digest of every token in the
  file, with no early exit: neither the answer's timing nor its content tells
  which token, or which prefix of one, came close.
- **The holder's name, never the token.** A line's third field names the
  holder; without one, the name is the first 8 hex digits of the token's
  SHA-256 (it identifies the token without revealing it). That name is what
  the prediction log records as a label's sender.
- **Refuse a weak or malformed file before serving.** Each line is checked
  (scope, token syntax and length, name), and a problem is a
  :class:`TokensError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import orjson

from mlnb.errors import ExitCode, MlnbError

MIN_TOKEN_CHARS = 16
MAX_TOKENS_FILE_BYTES = 2**20
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token: what a Bearer header carries
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_BEARER = b"bearer "

#: what an authentication failure is counted as in the metrics
DeniedKind = Literal["unauthenticated", "forbidden"]


class Scope(StrEnum):
    """What a token lets its holder do."""

    PREDICT = "predict"  # POST /invocations
    FEEDBACK = "feedback"  # POST /feedback: labels, the next model's training data


class TokensError(MlnbError):
    """A service's tokens file cannot be read or has a malformed line.

    Attributes:
        path: the tokens file.
        line: the 1-based line at fault; ``None`` for the file as a whole.
    """

    exit_code = ExitCode.INVALID

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class Denied(Exception):
    """A request refused for its credentials: 401 (no valid token) or 403 (not its scope).

    Attributes:
        status: 401 or 403.
        kind: its label in the metrics.
        message: what the client is told.
        challenge: the ``WWW-Authenticate`` header's value (RFC 6750).
    """

    def __init__(self, status: int, kind: DeniedKind, message: str, challenge: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.challenge = status, kind, message, challenge

    def body(self) -> bytes:
        """The answer's JSON body."""
        code = "UNAUTHENTICATED" if self.status == 401 else "PERMISSION_DENIED"
        return orjson.dumps({"error_code": code, "message": self.message})

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The answer's headers beyond its content type."""
        return [(b"www-authenticate", self.challenge.encode())]


@dataclass(frozen=True)
class Holder:
    """Who holds a token: the name the log records, and what the token may do."""

    name: str
    scopes: frozenset[Scope]


def holder_id(token: str) -> str:
    """A token's default holder name: 8 hex digits of its SHA-256, not enough to find it."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class Tokens:
    """The tokens a service accepts, each with its holder.

    Args:
        holders: each token and its holder.
    """

    def __init__(self, holders: dict[str, Holder]) -> None:
        self._entries = [
            (hashlib.sha256(token.encode()).digest(), holder) for token, holder in holders.items()
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def holder(self, authorization: bytes | None) -> Holder | None:
        """The holder of the token an ``Authorization`` header carries; ``None`` if none matches.

        The digest of the presented token is compared with every known one,
        in constant time and without stopping at a match.
        """
        if authorization is None or authorization[:7].lower() != _BEARER:
            return None
        presented = hashlib.sha256(authorization[7:].strip()).digest()
        found: Holder | None = None
        for digest, holder in self._entries:
            if hmac.compare_digest(presented, digest):
                found = holder
        return found

    def check(self, authorization: bytes | None, scope: Scope | None) -> Holder:
        """The holder a request's ``Authorization`` header names, if its token has ``scope``.

        Args:
            authorization: the header's value, ``None`` when the request has none.
            scope: the scope the endpoint needs; ``None``: any token will do.

        Raises:
            Denied: 401 when the header is missing or names no token; 403 when
                the token lacks ``scope``.
        """
        holder = self.holder(authorization)
        needed = f"a token of scope '{scope}'" if scope is not None else "a token"
        if holder is None:
            if authorization is None:
                raise Denied(
                    401,
                    "unauthenticated",
                    f"this endpoint needs {needed}; send 'Authorization: Bearer TOKEN'",
                    'Bearer realm="mlnb"',
                )
            raise Denied(
                401,
                "unauthenticated",
                "the Authorization header carries no valid token; send 'Bearer TOKEN' "
                "with a token from the service's tokens file",
                'Bearer realm="mlnb", error="invalid_token"',
            )
        if scope is not None and scope not in holder.scopes:
            raise Denied(
                403,
                "forbidden",
                f"the token of '{holder.name}' lacks scope '{scope}'; "
                f"add a '{scope}' line for it to the tokens file",
                f'Bearer realm="mlnb", error="insufficient_scope", scope="{scope}"',
            )
        return holder


def _parse_line(path: Path, number: int, text: str) -> tuple[Scope, str, str]:
    """One line's scope, token and holder name; a :class:`TokensError` naming the line if bad."""
    fields = text.split()
    if len(fields) not in (2, 3):
        raise TokensError(path, f"expected 'SCOPE TOKEN [NAME]', got {len(fields)} fields", number)
    scope, token = fields[0], fields[1]
    if scope not in set(Scope):
        raise TokensError(
            path,
            f"unknown scope '{scope}'; use {' or '.join(repr(str(s)) for s in Scope)}",
            number,
        )
    if not _TOKEN.match(token):
        raise TokensError(
            path, "the token has characters a Bearer header cannot carry (use base64url)", number
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise TokensError(
            path,
            f"the token has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}; make one "
            "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            number,
        )
    name = fields[2] if len(fields) == 3 else holder_id(token)
    if not _NAME.match(name):
        raise TokensError(
            path, f"the holder name '{name[:64]}' is not a name (letters, digits, ._@-)", number
        )
    return Scope(scope), token, name


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """The numbered lines of a tokens file that are neither blank nor comments."""
    try:
        if path.stat().st_size > MAX_TOKENS_FILE_BYTES:
            raise TokensError(path, f"larger than {MAX_TOKENS_FILE_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokensError(path, f"cannot read the tokens file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TokensError(path, "the tokens file is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def read_tokens(path: Path) -> Tokens:
    """The tokens a tokens file lists, each line ``SCOPE TOKEN [NAME]``.

    Raises:
        TokensError: the file cannot be read, a line is malformed (its scope,
            token or name), a token is given two names, or there is no token.
    """
    path = Path(path)
    holders: dict[str, Holder] = {}
    first_line: dict[str, int] = {}
    for number, text in _lines(path):
        scope, token, name = _parse_line(path, number, text)
        known = holders.get(token)
        if known is not None and known.name != name:
            raise TokensError(
                path,
                f"this token was named '{known.name}' on line {first_line[token]}; "
                "give one token one name",
                number,
            )
        scopes = known.scopes if known is not None else frozenset()
        holders[token] = Holder(name, scopes | {scope})
        first_line.setdefault(token, number)
    if not holders:
        raise TokensError(path, "no tokens; add lines 'SCOPE TOKEN [NAME]'")
    return Tokens(holders)
