"""Errors raised by the adapters. Driver and OS errors stop here and become one of these."""

from capsule.domain.errors import CapsuleError, Category


class RepositoryError(CapsuleError):
    """Raised when the repository cannot be opened or written."""

    category = Category.UNAVAILABLE


class RepositoryNotFound(RepositoryError):
    """Raised when no repository exists where one was expected."""

    category = Category.NOT_FOUND


class RepositoryExists(RepositoryError):
    """Raised when `init` finds a repository already in place."""

    category = Category.REFUSED


class UnsupportedVersion(RepositoryError):
    """Raised when the repository was written in a format version this Capsule cannot read."""

    category = Category.REFUSED


class WrongKey(RepositoryError):
    """Raised when neither the key file nor the passphrase opens the repository."""

    category = Category.REFUSED


class KeyFileMissing(RepositoryError):
    """Raised when the key file that opens the repository is not where it should be."""

    category = Category.NOT_FOUND


class IntegrityError(RepositoryError):
    """Raised when stored bytes fail authentication or do not match their id."""

    category = Category.DAMAGED


class BlobNotFound(IntegrityError):
    """Raised when a snapshot needs a blob that no index knows or no pack holds."""

    category = Category.DAMAGED


NOT_INDEXED_ADVICE = (
    "run `capsule rebuild-index` (an index file may be lost), and if that does not help, "
    "`capsule repair` sets aside what lost its data and says which snapshots it hurt"
)
"""What to do about a blob that no index names, said after the blob's id."""


class RepositoryLocked(RepositoryError):
    """Raised when another live process holds a lock that conflicts with ours."""

    category = Category.LOCKED


class ObjectNotFound(RepositoryError, FileNotFoundError):
    """Raised when a repository object (a pack, an index file, a lock) is not in the store.

    Also a FileNotFoundError, so that code written against files keeps treating it as one."""

    category = Category.NOT_FOUND


class StorageUnavailable(RepositoryError):
    """Raised when the store holding the repository cannot be reached or read now.

    `retryable` says whether the same request may succeed later (a rate limit, a timeout)."""

    category = Category.UNAVAILABLE

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class RateLimited(StorageUnavailable):
    """Raised when a store kept refusing requests for its rate limits through every try (Google
    Drive's daily upload cap): uploads to it wait hours, not seconds."""

    category = Category.UNAVAILABLE

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class RepositoryReadOnly(RepositoryError):
    """Raised when the repository cannot be written: a read-only mount, or no permission to write."""

    category = Category.REFUSED

    def __init__(self, message: str, read_only_mount: bool = True) -> None:
        super().__init__(message)
        self.read_only_mount = read_only_mount
        """True for a read-only file system; False when this user may not write there."""


class SourceError(CapsuleError):
    """Raised when the database or folder to back up cannot be read."""

    category = Category.UNAVAILABLE


class RestoreRefused(CapsuleError):
    """Raised when a restore would overwrite something without being told to."""

    category = Category.REFUSED


class DiskFull(CapsuleError):
    """Raised when a write fails because the disk is full."""

    category = Category.UNAVAILABLE


class DestinationNeedsConsent(CapsuleError):
    """Raised when an off-site destination refuses Capsule's authorization (revoked or expired), so
    that only the account's owner consenting again can let uploads continue."""

    category = Category.REFUSED


class ClientConfigInvalid(CapsuleError):
    """Raised when an OAuth client-secrets file or a consent answer cannot be used as it is."""

    category = Category.INVALID_INPUT


class SampleShopError(CapsuleError):
    """Raised when the sample shop's database or images cannot be written where they belong."""

    category = Category.UNAVAILABLE
