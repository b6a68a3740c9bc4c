"""The sample shop commands of the CLI: `capsule demo create`.

A sample database at CAPSULE_DATABASE and product images in CAPSULE_UPLOADS, to try Capsule on
(the README's first command); the shop's own files are never touched.
"""

from __future__ import annotations

import click

from capsule.api import render
from capsule.api.common import Context, pass_ctx, run
from capsule.domain.sizes import parse_size
from capsule.orchestrator.usecases.sample_shop import (
    MIN_DATABASE_BYTES,
    SampleShopRequest,
    create_sample_shop,
)

MiB = 1 << 20


def database_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """The bytes of a size such as 20M, 1.5G or 512K (binary multiples), at least the sample's least."""
    try:
        size = parse_size(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size; write it like 20M, 1.5G or 512K") from None
    if size < MIN_DATABASE_BYTES:
        raise click.BadParameter(f"{value!r} is too small; give at least {MIN_DATABASE_BYTES // MiB}M")
    return size


def image_count(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
    if value < 0:
        raise click.BadParameter(f"{value} is not a number of images; give 0 or more")
    return value


@click.group()
def demo() -> None:
    """A sample shop to try Capsule on."""


@demo.command()
@click.option(
    "--size",
    "database_bytes",
    default="20M",
    metavar="SIZE",
    callback=database_size,
    show_default=True,
    help="About how big a database to make (CAPSULE_DATABASE), like 20M or 1G.",
)
@click.option(
    "--images",
    type=int,
    default=300,
    metavar="COUNT",
    callback=image_count,
    show_default=True,
    help="How many product images to make (CAPSULE_UPLOADS), 200 KiB each on average.",
)
@pass_ctx
def create(obj: Context, database_bytes: int, images: int) -> None:
    """Make a sample database and product images where there are none; leave what is there alone."""
    request = SampleShopRequest(database_bytes=database_bytes, images=images)
    run(lambda: render.sample_shop(create_sample_shop(obj.settings, request)))
