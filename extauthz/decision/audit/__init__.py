"""Audit records: one JSON line per decision, hash-chained, written off the hot path.

The Check path builds a plain dict and hands it to ``AuditLog.emit``; a writer thread serialises,
chains and writes it. Nothing secret is ever put in a record: tokens appear only as ``iss``/``sub``.

Every line is a JSON object whose last three members are added here:

* ``seq``: 1, 2, 3, ... for the whole chain (continuing across rotation and restarts);
* ``prev_hash``: the ``hash`` of the record before it (``GENESIS`` for the first one);
* ``hash``: ``sha256:HEX`` (or ``hmac-sha256:HEX`` with a key) of the line's bytes up to, not
  including, ``,"hash":`` followed by ``}``. The line must end exactly with that member.

Changing a byte breaks the record's own hash; removing, inserting or swapping records breaks the
next record's ``prev_hash`` and ``seq``. Without a key the chain shows accidents and clumsy edits;
with a key (``audit_hmac_key_file``) nobody without the key can write a record that verifies.
What no chain shows by itself: records cut off the end of the newest file (the head shows it).

Modules: ``record`` (encoding, caps, timestamps), ``chain`` (Hasher, seal, ChainState), ``sinks``
(stream and rotated file), ``head`` (the anchored head, ``PATH.head``), ``shared`` (the offered
counters, ``PATH.offered``: a killed process's records are counted at the next start),
``writer`` (AuditLog: queue and writer thread), ``lines`` (queued lines that stand for other
counts: loss events), ``files`` (reading a log), ``verify``.
"""

from extauthz.decision.audit.chain import GENESIS, HASH_MEMBER, ChainState, Hasher, seal, split_sealed
from extauthz.decision.audit.record import (
    MAX_FIELD_CHARS,
    MAX_LIST_ITEMS,
    encode_record,
    rfc3339,
    rfc3339_now,
)
from extauthz.decision.audit.sinks import FileSink, Sink, StreamSink
from extauthz.decision.audit.verify import VerifyResult, verify
from extauthz.decision.audit.writer import (
    OVERFLOW_DENY,
    OVERFLOW_DROP_ALLOWED,
    OVERFLOW_MODES,
    AuditLog,
)

__all__ = [
    "GENESIS",
    "HASH_MEMBER",
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "OVERFLOW_DENY",
    "OVERFLOW_DROP_ALLOWED",
    "OVERFLOW_MODES",
    "AuditLog",
    "ChainState",
    "FileSink",
    "Hasher",
    "Sink",
    "StreamSink",
    "VerifyResult",
    "encode_record",
    "rfc3339",
    "rfc3339_now",
    "seal",
    "split_sealed",
    "verify",
]
