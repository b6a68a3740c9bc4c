"""The retention commands: `capsule forget` and `capsule tag`.

`capsule.api.cli` registers them on the `capsule` group; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import render, render_forget
from capsule.api.common import Context, pass_ctx, run


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Say what would be forgotten and why; change nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="With SNAPSHOT: also forget a pinned snapshot, or the last one of a kind of a source.",
)
@click.option(
    "--prune",
    "then_prune",
    is_flag=True,
    help="Then give the space of what was forgotten back, as `capsule prune` does, in the same run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print every snapshot's verdict as JSON.")
@pass_ctx
def forget(  # noqa: PLR0917 (click passes options by position)
    obj: Context, snapshots: tuple[str, ...], dry_run: bool, force: bool, then_prune: bool, as_json: bool
) -> None:
    """Apply the retention policies (`capsule settings show` lists them): print every snapshot with
    the rules that keep it, or why none does, and forget those none keeps. With SNAPSHOT (an id, a
    prefix of 4 characters or more, `latest-database`...), forget those by hand. Pinned snapshots
    (`capsule tag SNAPSHOT --add keep`) are never forgotten by a policy. `capsule prune` gives the
    space of forgotten snapshots back; `--prune` does so right after forgetting."""
    from capsule.orchestrator.usecases.forget import (  # noqa: PLC0415
        ApplyRetention,
        ForgetByHand,
        apply_retention,
        forget_snapshots,
    )

    if force and not snapshots:
        raise click.UsageError(
            "--force applies to snapshots named by hand: `capsule forget SNAPSHOT --force`"
        )

    if then_prune and dry_run:
        raise click.UsageError(
            "--prune and --dry-run do not go together: `capsule forget --dry-run` says what would be "
            "forgotten, `capsule prune --dry-run` what a prune would give back now"
        )

    def go() -> int | None:
        if snapshots:
            report = forget_snapshots(obj.settings, ForgetByHand(snapshots, force=force, dry_run=dry_run))
        else:
            report = apply_retention(obj.settings, ApplyRetention(dry_run=dry_run))
        if not then_prune:
            render_forget.forgotten(report, as_json)
            return None
        from capsule.orchestrator.usecases.prune import Prune, run_prune  # noqa: PLC0415

        if not as_json:
            render_forget.forgotten(report, as_json, pruning=True)
        with render.progress_bar("Pruning", not as_json) as progress:
            pruned = run_prune(obj.settings, Prune(), progress)
        return render_forget.forgot_and_pruned(report, pruned, as_json)

    run(go)


@click.command()
@click.argument("snapshot")
@click.option("--add", "add", multiple=True, metavar="TAG", help="Add this tag (repeatable); `keep` pins.")
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove this tag (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot's tags as JSON.")
@pass_ctx
def tag(obj: Context, snapshot: str, add: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> None:
    """Add or remove a snapshot's tags. `capsule tag SNAPSHOT --add keep` pins it: no retention
    policy forgets it, and forgetting it by hand needs --force."""
    from capsule.orchestrator.usecases.forget import TagSnapshot, tag_snapshot  # noqa: PLC0415

    run(lambda: render_forget.tagged(tag_snapshot(obj.settings, TagSnapshot(snapshot, add, remove)), as_json))


COMMANDS = (forget, tag)
