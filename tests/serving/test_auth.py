"""The tokens file and the check of a request's token: scopes, names, constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from mlnb.errors import ExitCode
from mlnb.serving import auth
from mlnb.serving.auth import Denied, Scope, TokensError, holder_id, read_tokens

PREDICT = "p" * 20 + "Az09-._~+/=="
FEEDBACK = "f" * 32
BOTH = "b" * 24


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def test_a_tokens_file_gives_each_token_its_holder_and_scopes(tmp_path: Path) -> None:
    tokens = read_tokens(
        write(
            tmp_path,
            f"# who may call the service\n\n  predict {PREDICT} shop\n"
            f"feedback\t{FEEDBACK}\npredict {BOTH} ops\nfeedback {BOTH} ops\n",
        )
    )
    assert len(tokens) == 3
    shop = tokens.check(bearer(PREDICT), Scope.PREDICT)
    assert (shop.name, shop.scopes) == ("shop", frozenset({Scope.PREDICT}))
    unnamed = tokens.check(bearer(FEEDBACK), Scope.FEEDBACK)
    assert unnamed.name == holder_id(FEEDBACK) == hashlib.sha256(FEEDBACK.encode()).hexdigest()[:8]
    assert FEEDBACK not in unnamed.name
    ops = tokens.check(b"bearer   " + BOTH.encode(), Scope.FEEDBACK)  # the scheme in any case
    assert (ops.name, ops.scopes) == ("ops", frozenset(Scope))
    assert tokens.check(bearer(FEEDBACK), None).name == unnamed.name  # any scope will do


@pytest.mark.parametrize(
    ("header", "status", "challenge", "words"),
    [
        (None, 401, 'Bearer realm="mlnb"', ["needs a token of scope 'predict'"]),
        (bearer("x" * 32), 401, 'error="invalid_token"', ["no valid token"]),
        (f"Basic {PREDICT}".encode(), 401, 'error="invalid_token"', ["no valid token"]),
        (bearer(PREDICT[:-1]), 401, 'error="invalid_token"', ["no valid token"]),
        (bearer(FEEDBACK), 403, 'error="insufficient_scope", scope="predict"', ["lacks scope"]),
    ],
)
def test_a_request_without_the_right_token_is_denied(
    tmp_path: Path, header: bytes | None, status: int, challenge: str, words: list[str]
) -> None:
    tokens = read_tokens(write(tmp_path, f"predict {PREDICT} shop\nfeedback {FEEDBACK} lab\n"))
    with pytest.raises(Denied) as denied:
        tokens.check(header, Scope.PREDICT)
    assert denied.value.status == status
    assert challenge in denied.value.challenge
    assert denied.value.headers()[0][0] == b"www-authenticate"
    for word in words:
        assert word in denied.value.message
    body = denied.value.body().decode()
    assert ("UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED") in body
    assert PREDICT not in body and FEEDBACK not in body


def test_every_token_is_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"predict {os.urandom(16).hex()} holder{i}" for i in range(5)]
    tokens = read_tokens(write(tmp_path, "\n".join([f"predict {PREDICT} first", *lines])))
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert tokens.check(bearer(PREDICT), Scope.PREDICT).name == "first"  # the first line matches
    assert len(compared) == 6  # and still every token was compared
    assert {len(a) for a, _ in compared} == {len(b) for _, b in compared} == {32}  # digests
    compared.clear()
    with pytest.raises(Denied):
        tokens.check(bearer("nope" * 8), Scope.PREDICT)
    assert len(compared) == 6


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (f"predict {PREDICT}\npredict\n", 2, ["expected 'SCOPE TOKEN [NAME]', got 1 field"]),
        (f"predict {PREDICT} a b\n", 1, ["got 4 fields"]),
        (f"# c\nscore {PREDICT}\n", 2, ["unknown scope 'score'", "'predict' or 'feedback'"]),
        ("predict short\n", 1, ["5 characters, fewer than 16", "secrets.token_urlsafe"]),
        ("predict tö" + "k" * 20 + "\n", 1, ["characters a Bearer header cannot carry"]),
        (f"predict {PREDICT} bad/name\n", 1, ["holder name 'bad/name'"]),
        (
            f"predict {PREDICT} one\nfeedback {PREDICT} two\n",
            2,
            ["named 'one' on line 1", "one token one name"],
        ),
    ],
)
def test_a_malformed_line_is_refused_naming_file_and_line(
    tmp_path: Path, text: str, line: int, words: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TokensError) as refused:
        read_tokens(path)
    assert str(refused.value).startswith(f"{path}:{line}: ")
    assert (refused.value.path, refused.value.line) == (str(path), line)
    assert refused.value.exit_code == ExitCode.INVALID
    for word in words:
        assert word in str(refused.value)
    assert PREDICT not in str(refused.value)  # a token is never repeated back


def test_an_empty_missing_or_binary_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokensError, match="no tokens; add lines"):
        read_tokens(write(tmp_path, "# nothing yet\n\n"))
    with pytest.raises(TokensError, match="cannot read the tokens file: No such file"):
        read_tokens(tmp_path / "absent")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe predict")
    with pytest.raises(TokensError, match="not UTF-8"):
        read_tokens(binary)
    huge = tmp_path / "huge"
    huge.write_bytes(b"#" * (auth.MAX_TOKENS_FILE_BYTES + 1))
    with pytest.raises(TokensError, match="larger than"):
        read_tokens(huge)
