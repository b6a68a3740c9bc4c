"""Secrets at rest: a small box that seals text with AES-GCM under a key file in Capsule's home.

Some settings are secrets: the SMTP password, a Google Drive destination's client secret and refresh
token. The settings aggregate keeps every value in the event log, which is copied, replayed and
printed by `capsule audit`; so a secret is sealed before it becomes an event, and the log holds only

    sealed:v1:<base64 of nonce (12 bytes) || AES-256-GCM ciphertext and tag>

The key is 32 random bytes in `<home>/secrets.key` (one line of hex under a comment, mode 0600),
created on first use as the event log's key is, and never replaced once it exists: a value sealed
with it would be lost. The purpose (the setting's key, `alerts.smtp.password`) is bound in as
associated data, so a sealed value cannot be moved to another setting and opened there. Every
machine that must open a secret needs a copy of the key file (in distributed mode, like the event
log's key).

Nothing here logs, and no error names a secret's text: a plaintext reaches only the caller that
opened it, to hand it to the server that needs it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from capsule.domain.errors import CapsuleError, Category
from capsule.domain.settings import SEALED_PREFIX
from capsule.orchestrator.private import create_key_file, key_from_text

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_NAME = "secrets.key"
KEY_FILE_HEADER = (
    "# Capsule's secrets key: it seals the secrets among the settings (the SMTP password). Keep it\n"
    "# secret, keep a copy with the repository key, and give it to every machine that sends alerts.\n"
)


class SecretUnavailable(CapsuleError):
    """Raised when a sealed secret cannot be opened: its key file is missing, unreadable or another."""

    category = Category.UNAVAILABLE


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


class SecretBox:
    """Seals and opens text under the key in `key_file`, which `seal` creates when it is missing."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = Path(key_file)
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"SecretBox({str(self.key_file)!r})"

    def seal(self, purpose: str, plaintext: str) -> str:
        """`plaintext` sealed for `purpose` (the setting's key); a new nonce every time."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self._read_key(create=True)).encrypt(nonce, plaintext.encode(), purpose.encode())
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, purpose: str, sealed: str) -> str:
        """The text sealed for `purpose`; SecretUnavailable says why it cannot be opened."""
        if not is_sealed(sealed):
            raise SecretUnavailable(f"{purpose} is not stored sealed; set it again")
        try:
            raw = base64.b64decode(sealed[len(SEALED_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as e:
            raise SecretUnavailable(f"{purpose} is damaged in the settings; set it again") from e
        key = self._read_key(create=False)
        try:
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], purpose.encode())
        except (InvalidTag, ValueError) as e:
            raise SecretUnavailable(
                f"{purpose} was sealed with another secrets key than {self.key_file}; copy that key here "
                f"from the machine that set it, or set {purpose} again"
            ) from e
        return plain.decode()

    def _read_key(self, *, create: bool) -> bytes:
        if self._key is None:
            if create and not self.key_file.exists():
                self._create()
            self._key = self._load()
        return self._key

    def _load(self) -> bytes:
        try:
            text = self.key_file.read_text(encoding="ascii")
        except FileNotFoundError as e:
            raise SecretUnavailable(
                f"the secrets key file {self.key_file} is missing: copy it there from the machine where "
                "the secret settings were set, or set them again"
            ) from e
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "it is not text"
            raise SecretUnavailable(f"the secrets key file {self.key_file} cannot be read ({reason})") from e
        key = key_from_text(text, KEY_BYTES)
        if key is None:
            raise SecretUnavailable(
                f"the file {self.key_file} is not a secrets key (one line of {2 * KEY_BYTES} hex digits)"
            )
        return key

    def _create(self) -> None:
        try:
            create_key_file(self.key_file, KEY_FILE_HEADER, KEY_BYTES)
        except OSError as e:
            raise SecretUnavailable(
                f"the secrets key file {self.key_file} cannot be created ({e.strerror}); check that its "
                "folder is writable"
            ) from e


def box_in(home: Path) -> SecretBox:
    """The box of the Capsule whose home is `home`."""
    return SecretBox(Path(home) / KEY_FILE_NAME)
