"""Use case: make a sample shop to try Capsule on, where the settings say the shop's files are.

The database goes to CAPSULE_DATABASE and the product images to CAPSULE_UPLOADS, each only where
there is none: a shop's own files are never touched. No repository, no event log: the sample is
the shop, not a backup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from capsule.adapters.sampleshop import Made, make_database, make_images
from capsule.orchestrator.settings import Settings

MIN_DATABASE_BYTES = 1 << 20
"""The smallest sample database: below it, its products and customers (about 190 KB) would be most
of it, with hardly a sale to back up."""


class SampleShopRequest(BaseModel):
    """How big a sample shop to make."""

    model_config = ConfigDict(frozen=True)

    database_bytes: int = Field(20 << 20, ge=MIN_DATABASE_BYTES)
    images: int = Field(300, ge=0)


@dataclass(frozen=True)
class SamplePart:
    """The database or the images folder: made now (with what), or left as it was."""

    path: Path
    made: bool
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class SampleShop:
    """What `create_sample_shop` did with each half of the shop."""

    database: SamplePart
    images: SamplePart


def create_sample_shop(settings: Settings, request: SampleShopRequest) -> SampleShop:
    """Make the sample database and images where there are none; leave what is there alone."""
    return SampleShop(
        database=_part(settings.database, make_database(settings.database, request.database_bytes)),
        images=_part(settings.uploads, make_images(settings.uploads, request.images)),
    )


def _part(path: Path, made: Made | None) -> SamplePart:
    if made is None:
        return SamplePart(path, made=False)
    return SamplePart(path, made=True, files=made.files, bytes=made.bytes)
