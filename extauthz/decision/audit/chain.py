"""The hash chain: ``seq``, ``prev_hash`` and ``hash`` members sealed onto each line."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extauthz.decision.audit.record import encode_body

log = logging.getLogger("extauthz.decision.audit")

GENESIS = "genesis"
HASH_MEMBER = ',"hash":"'
_TAIL_BYTES = 1 << 20  # how far back to look for the last record when continuing a file


class Hasher:
    """``sha256:HEX`` of a line, or ``hmac-sha256:HEX`` under a secret key."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key

    @classmethod
    def from_key_file(cls, path: str | None) -> Hasher:
        if not path:
            return cls()
        key = Path(path).read_bytes().strip()
        if len(key) < 16:
            raise ValueError(f"audit HMAC key file {path}: use at least 16 bytes of secret")
        return cls(key)

    def __call__(self, data: bytes) -> str:
        if self.key is None:
            return "sha256:" + hashlib.sha256(data).hexdigest()
        return "hmac-sha256:" + hmac.new(self.key, data, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class ChainState:
    seq: int = 0
    last_hash: str = GENESIS


def seal(record: dict[str, Any], state: ChainState, hasher: Hasher) -> str:
    """Encode ``record`` as the next line of the chain (no newline) and advance ``state``."""
    return seal_body(encode_body(record), state, hasher)


def seal_body(body: str, state: ChainState, hasher: Hasher) -> str:
    """Seal ``body`` (a compact JSON object, ASCII, without chain members) as the next line."""
    seq = state.seq + 1
    if len(body) > 2:
        head = f'{body[:-1]},"seq":{seq},"prev_hash":"{state.last_hash}"'
    else:
        head = f'{{"seq":{seq},"prev_hash":"{state.last_hash}"'
    digest = hasher((head + "}").encode("ascii"))
    state.seq = seq
    state.last_hash = digest
    return f'{head}{HASH_MEMBER}{digest}"}}'


def unsealed_body(line: str) -> str | None:
    """The body of a sealed line without its chain members (what ``seal_body`` was given).

    The chain members are the line's last three; a string value cannot hold an unescaped quote,
    so the last ``"seq":`` is the chain's. None when the line is not shaped like a sealed one."""
    if not line.endswith('"}'):
        return None
    i = line.rfind('"seq":')
    if i < 1:
        return None
    if line[i - 1] == ",":
        return line[: i - 1] + "}"
    return "{}" if line[i - 1] == "{" else None


def split_sealed(line: str) -> tuple[str, str] | None:
    """(the hashed body, the hash) of a sealed line, or None when it is not shaped like one."""
    i = line.rfind(HASH_MEMBER)
    if i == -1 or not line.endswith('"}'):
        return None
    digest = line[i + len(HASH_MEMBER) : -2]
    if '"' in digest or "\\" in digest:
        return None
    return line[:i] + "}", digest


def state_after(line: str, hasher: Hasher) -> ChainState:
    """The chain state a new record continues from, given the last line written."""
    parts = split_sealed(line)
    if parts is not None:
        try:
            seq = json.loads(parts[0]).get("seq")
        except ValueError:
            seq = None
        if isinstance(seq, int):
            return ChainState(seq, parts[1])
    # A damaged last line: chain onto its bytes; ``audit verify`` will show the damage there.
    log.warning("the last audit record is damaged; continuing the chain after it")
    return ChainState(0, hasher(line.encode("ascii", "replace")))


def last_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None
    lines = [x for x in tail.split(b"\n") if x.strip()]
    return lines[-1].decode("ascii", "replace") if lines else None
