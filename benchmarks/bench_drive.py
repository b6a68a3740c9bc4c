"""Drive benchmark: `capsule sync` to Google Drive and `restore --from` it, against the fake Drive.

    python -m benchmarks.bench_drive [--size 256M] [--pack-size SIZE] [--upload-runs 3]
                                     [--restore-runs 3] [--copy-runs 3] [--workdir DIR] [--keep]
                                     [--json-out FILE]

The fake Drive server of the tests (tests/fakes/drive.py) runs in this process on 127.0.0.1 and
counts every request; the `capsule` commands run as processes of their own, reaching it through
CAPSULE_GDRIVE_ROOT_URL as they would reach a proxy. In one scratch directory (deleted at the end
unless --keep): a generated point-of-sale database of --size, a repository made with --pack-size
(by default, the pack size `capsule init` gives a new repository) and one backup of it, then:

1. upload: `capsule sync drive` into an empty Drive, --upload-runs times (the Drive emptied between
   runs): MB/s (bytes sent / wall seconds), CPU seconds (user + sys) and peak RSS of the command, and
   the requests the fake counted, for the packs alone (per pack and per GiB) and for the whole sync;
2. a dropped connection: the same sync, with the connection of one pack's upload reset after half
   of it arrived; the bytes of chunks sent again are those the upload PUTs carried beyond a clean
   run's;
3. a kill: the same sync, killed (SIGKILL) while the fake holds half a chunk, then run again;
   bytes sent again as in 2, and the copy checked complete (`capsule snapshots --from drive`);
4. restore: `capsule restore latest --to DIR --from drive` against the same restore from the local
   repository, the two taking turns, --restore-runs each, medians;
5. when `rclone` is on the PATH: `rclone copy` of the repository folder to a local folder against
   `capsule sync` to a folder destination, each into an empty folder, taking turns, --copy-runs
   each, medians. rclone has no setting for Drive's address, so it cannot be pointed at the fake
   Drive: this row compares two copies to a local folder, not two uploads to Drive.

Loopback has no network in the way: the upload rate is what the client and the fake can do on
this machine's cores, an upper bound for real Drive, and the request counts are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MB,
    align_columns,
    capsule_command,
    capsule_env,
    last_json_object,
    log,
    scratch_directory,
)
from benchmarks.posdb import generate, parse_size

GiB = 1024**3
TARGET_REQUESTS_PER_GIB = 80
DESTINATION = "drive"
FOLDER = "folder"
RCLONE_NOTE = "rclone cannot be pointed at the fake Drive: both copy to a local folder"


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


# A tiny launcher forks the command and reports its own figures: Linux carries a parent's memory
# high-water mark into a child's ru_maxrss, and this process holds the fake Drive's files.
_LAUNCHER = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    json.dump({"seconds": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss": usage.ru_maxrss, "status": status}, out)
"""


def run(argv: list[str], env: dict[str, str], *, check: bool = True) -> Run:
    """Run a command: its wall time, CPU time (user + sys) and peak RSS."""
    os.sync()  # each command pays for its own writes, not for the previous one's
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "usage.json"
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *argv],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        )  # fmt: skip
        usage = json.loads(report.read_text())
    code = os.waitstatus_to_exitcode(usage["status"])
    if check and code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {code}:\n{(proc.stderr or proc.stdout)[-2000:]}")
    return Run(usage["seconds"], usage["cpu"], usage["maxrss"] * 1024, code, proc.stdout, proc.stderr)


# ---- what the fake saw ---------------------------------------------------------------------------
@dataclass
class Traffic:
    requests: int
    pack_requests: int
    packs: int
    files: int
    pack_bytes: int
    put_bytes: int
    """Body bytes of every upload PUT (chunks, sent again ones included)."""
    by_kind: dict[str, int]


def traffic(fake: Any) -> Traffic:
    """Requests the fake recorded since its reset, those of the packs' uploads apart."""
    data_sessions = {
        uid for uid, s in fake.sessions.items() if str(s.metadata.get("name", "")).startswith("data-")
    }
    packs = [f for f in fake.files.values() if f.name.startswith("data-") and not f.trashed]
    pack_puts = sum(
        1 for r in fake.requests if r.method == "PUT" and r.query.get("upload_id") in data_sessions
    )
    return Traffic(
        requests=len(fake.requests),
        pack_requests=len(data_sessions) + pack_puts,
        packs=len(packs),
        files=sum(1 for f in fake.files.values() if f.mime_type != "application/vnd.google-apps.folder"),
        pack_bytes=sum(len(f.content) for f in packs),
        put_bytes=sum(r.received for r in fake.requests if r.method == "PUT"),
        by_kind=_by_kind(fake.requests),
    )


def _by_kind(requests: list[Any]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in requests:
        path = "/drive/v3/files/ID" if r.path.startswith("/drive/v3/files/") else r.path
        key = f"{r.method} {path}" + (" (status query)" if r.content_range.startswith("bytes */") else "")
        key += " (media)" if r.query.get("alt") == "media" else ""
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


# ---- the benchmark -------------------------------------------------------------------------------
class Bench:
    def __init__(self, workdir: Path, fake: Any, command: list[str], pack_size: int | None) -> None:
        self.workdir, self.fake, self.command = workdir, fake, command
        self.database = workdir / "pos.db"
        self.repository = workdir / "repo"
        self.home = workdir / "home"
        settings = {
            "CAPSULE_DATABASE": str(self.database),
            "CAPSULE_REPOSITORY": str(self.repository),
            "CAPSULE_HOME": str(self.home),
            "CAPSULE_GDRIVE_ROOT_URL": fake.url,
        }
        if pack_size is not None:  # otherwise `capsule init` gives the repository its default
            settings["CAPSULE_PACK_SIZE"] = str(pack_size)
        self.env = capsule_env(command, settings, drop=["CAPSULE_PACK_SIZE"])

    def capsule(self, *args: str, check: bool = True) -> Run:
        return run([*self.command, *args], self.env, check=check)

    def _settings(self) -> Any:
        from capsule.orchestrator.settings import Settings

        return Settings.model_validate(
            {"database": self.database, "repository": self.repository, "home": self.home}
        )

    def add_destination(self) -> None:
        from capsule.orchestrator.usecases.destinations import add_gdrive

        add_gdrive(
            self._settings(), DESTINATION, self.fake.client_config(), self.fake.credentials().refresh_token
        )

    def add_folder(self, path: Path) -> None:
        from capsule.orchestrator.usecases.destinations import add_folder

        add_folder(self._settings(), FOLDER, path)

    def pack_size(self) -> int:
        """The pack size the repository's config records."""
        return int(json.loads((self.repository / "config").read_text())["pack_size"])

    def sync(self, destination: str = DESTINATION) -> tuple[Run, dict[str, Any]]:
        result = self.capsule("sync", destination, "--json")
        [synced] = last_json_object(result.stdout)["destinations"]
        if not synced["ok"]:
            raise RuntimeError(f"sync failed: {synced['message']}")
        return result, synced


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def folder_copies(bench: Bench, rclone: str, runs: int) -> dict[str, Any]:
    """`capsule sync` to a folder destination against `rclone copy` of the repository folder, each
    into an empty folder, taking turns (each goes first every other run): medians."""
    targets = {"capsule": bench.workdir / "capsule-copy", "rclone": bench.workdir / "rclone-copy"}
    bench.add_folder(targets["capsule"])
    config = bench.workdir / "rclone.conf"
    config.touch()  # no remotes needed for local folders; keeps the user's own rclone.conf out
    env = {**os.environ, "RCLONE_CONFIG": str(config)}
    results: dict[str, list[Run]] = {"capsule": [], "rclone": []}
    for i in range(runs):
        for tool in ("capsule", "rclone") if i % 2 == 0 else ("rclone", "capsule"):
            shutil.rmtree(targets[tool], ignore_errors=True)
            targets[tool].mkdir()  # capsule sync refuses a missing folder (it may be an unmounted share)
            log(f"{tool} copy to a folder {i + 1}/{runs}")
            if tool == "capsule":
                results[tool].append(bench.sync(FOLDER)[0])
            else:
                results[tool].append(run([rclone, "copy", str(bench.repository), str(targets[tool])], env))
    source = _files(bench.repository)
    figures: dict[str, Any] = {"note": RCLONE_NOTE}
    for tool, done in results.items():
        copied = _files(targets[tool])
        figures[tool] = {
            "runs_seconds": [r.seconds for r in done],
            "seconds": median([r.seconds for r in done]),
            "cpu_seconds": median([r.cpu_seconds for r in done]),
            "peak_rss_bytes": max(r.peak_rss_bytes for r in done),
            "mb_per_s": sum(source.values()) / MB / median([r.seconds for r in done]),
            "complete": all(copied.get(name) == size for name, size in source.items()),
            "extra_files": len(set(copied) - set(source)),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M", help="size of the generated database (default 256M)")
    parser.add_argument("--pack-size", help="the repository's pack size (default: what `capsule init` gives)")
    parser.add_argument("--upload-runs", type=int, default=3)
    parser.add_argument("--restore-runs", type=int, default=3)
    parser.add_argument("--copy-runs", type=int, default=3, help="runs of each folder copy (rclone, capsule)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    command = capsule_command()
    if command is None:
        print("capsule is not installed: pip install -e . first", file=sys.stderr)
        return 2
    try:
        from tests.fakes.drive import FakeDrive
    except ImportError:
        print(
            "run from the repository's root: the fake Drive server is tests/fakes/drive.py", file=sys.stderr
        )
        return 2
    from capsule.adapters.repository.backends.gdrive import CHUNK

    pack_size = parse_size(args.pack_size) if args.pack_size else None
    figures: dict[str, Any] = {"size": args.size}
    with scratch_directory(args.workdir, "bench-drive-", keep=args.keep) as workdir, FakeDrive() as fake:
        bench = Bench(workdir, fake, command, pack_size)
        log(f"generating a {args.size} database")
        generate(bench.database, parse_size(args.size))
        bench.capsule("init")
        figures["pack_size"] = bench.pack_size()
        figures["pack_size_given"] = pack_size is not None
        backup = bench.capsule("backup", "--kind", "database")
        figures["backup"] = {"seconds": backup.seconds, "cpu_seconds": backup.cpu_seconds,
                             "peak_rss_bytes": backup.peak_rss_bytes}  # fmt: skip
        bench.add_destination()
        repository_bytes = sum(p.stat().st_size for p in bench.repository.rglob("*") if p.is_file())
        figures["repository_bytes"] = repository_bytes

        # 1. upload
        uploads: list[Run] = []
        clean: Traffic | None = None
        fake_cpu: list[float] = []
        for i in range(args.upload_runs):
            fake.reset()
            log(f"sync {i + 1}/{args.upload_runs}")
            before = time.process_time()
            result, synced = bench.sync()
            fake_cpu.append(time.process_time() - before)
            uploads.append(result)
            clean = traffic(fake)
            sent_bytes = synced["sent_bytes"]
        assert clean is not None
        seconds = median([u.seconds for u in uploads])
        largest_pack = max(
            (len(f.content) for f in fake.files.values() if f.name.startswith("data-")), default=0
        )
        one_chunk = min(CHUNK, largest_pack) if largest_pack else CHUNK
        figures["upload"] = {
            "runs_seconds": [u.seconds for u in uploads],
            "seconds": seconds,
            "mb_per_s": sent_bytes / MB / seconds,
            "cpu_seconds": median([u.cpu_seconds for u in uploads]),
            "fake_cpu_seconds": median(fake_cpu),
            "peak_rss_bytes": max(u.peak_rss_bytes for u in uploads),
            "sent_bytes": sent_bytes,
            "objects": synced["sent"],
            "requests": clean.requests,
            "requests_by_kind": clean.by_kind,
            "packs": clean.packs,
            "pack_bytes": clean.pack_bytes,
            "pack_requests": clean.pack_requests,
            "requests_per_pack": clean.pack_requests / max(clean.packs, 1),
            "pack_requests_per_gib": clean.pack_requests / (clean.pack_bytes / GiB),
            "requests_per_gib_whole_sync": clean.requests / (sent_bytes / GiB),
            "chunk_bytes": one_chunk,
        }
        middle = clean.packs // 2

        # 2. a dropped connection in the middle of a pack's chunk
        fake.reset()
        fake.fail(1, "drop", method="PUT", skip=middle)
        log("sync with a dropped connection")
        result, _ = bench.sync()
        dropped = traffic(fake)
        figures["drop"] = {"seconds": result.seconds, "resent_bytes": dropped.put_bytes - clean.put_bytes,
                           "requests": dropped.requests}  # fmt: skip

        # 3. kill -9 with half a chunk sent, then a restart
        fake.reset()
        fake.fail(1, "stall", method="PUT", skip=middle)
        log("sync killed in the middle of a chunk, then run again")
        proc = subprocess.Popen([*command, "sync", DESTINATION], env=bench.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        held = fake.stalled.wait(timeout=600)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fake.release()
        result, _ = bench.sync()
        killed = traffic(fake)
        listed = json.loads(bench.capsule("snapshots", "--from", DESTINATION, "--json").stdout)
        figures["kill"] = {
            "held": held,
            "resent_bytes": killed.put_bytes - clean.put_bytes,
            "requests": killed.requests,
            "complete": (killed.packs, killed.files) == (clean.packs, clean.files)
            and any("damaged" not in row for row in listed),
        }

        # 4. restore from Drive against restore from the local repository, taking turns
        times: dict[str, list[float]] = {"local": [], "drive": []}
        cpu: dict[str, list[float]] = {"local": [], "drive": []}
        rss: dict[str, list[int]] = {"local": [], "drive": []}
        for i in range(args.restore_runs):
            for source in ("local", "drive"):
                target = workdir / f"restore-{source}-{i}"
                extra = ["--from", DESTINATION] if source == "drive" else []
                log(f"restore from {source} {i + 1}/{args.restore_runs}")
                asked = len(fake.requests)
                result = bench.capsule("restore", "latest", "--to", str(target), *extra)
                if source == "drive":
                    restore_requests = len(fake.requests) - asked
                    restore_kinds = _by_kind(fake.requests[asked:])
                times[source].append(result.seconds)
                cpu[source].append(result.cpu_seconds)
                rss[source].append(result.peak_rss_bytes)
                shutil.rmtree(target)
        db_bytes = bench.database.stat().st_size
        figures["restore"] = {
            source: {"runs_seconds": times[source], "seconds": median(times[source]),
                     "cpu_seconds": median(cpu[source]), "mb_per_s": db_bytes / MB / median(times[source]),
                     "peak_rss_bytes": max(rss[source])}
            for source in times
        }  # fmt: skip
        figures["restore"]["drive"]["requests"] = restore_requests
        figures["restore"]["drive"]["requests_by_kind"] = restore_kinds

        # 5. rclone against capsule sync, both to a local folder
        rclone = shutil.which("rclone")
        if rclone and args.copy_runs > 0:
            figures["rclone"] = folder_copies(bench, rclone, args.copy_runs)
        else:
            reason = "rclone is not on the PATH" if not rclone else "--copy-runs 0"
            print(f"rclone row skipped: {reason}", file=sys.stderr)
            figures["rclone"] = {"skipped": reason}

    print_report(figures)
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))
    return 0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _timed(figures: dict[str, Any], *, rss_too: bool = False) -> str:
    rss = (
        f", peak RSS {figures['peak_rss_bytes'] / MB:.0f} MB"
        if rss_too and "peak_rss_bytes" in figures
        else ""
    )
    cpu = figures["cpu_seconds"]
    return f"{figures['seconds']:.2f} s ({figures['mb_per_s']:.0f} MB/s, CPU {cpu:.2f} s{rss})"


def print_report(f: dict[str, Any]) -> None:
    up, drop, kill, restore = f["upload"], f["drop"], f["kill"], f["restore"]
    mib = 1024 * 1024
    chunk = up["chunk_bytes"]
    one_chunk = f"<= one chunk ({chunk / mib:.1f} MiB)"
    runs = ", ".join(f"{s:.2f}" for s in up["runs_seconds"])
    per_pack = f"{up['requests_per_pack']:.2f} ({up['pack_requests']} for {up['packs']} packs)"
    per_gib = up["pack_requests_per_gib"]
    per_cpu = up["sent_bytes"] / MB / up["cpu_seconds"]
    once = up["requests"] - up["pack_requests"]
    searches = up.get("requests_by_kind", {}).get("GET /drive/v3/files", 0)
    whole = (
        f"{up['requests']} ({up['requests_per_gib_whole_sync']:.0f} per GiB sent): "
        f"{once} besides the packs', {searches} of them searches"
    )
    killed = f"{kill['resent_bytes'] / mib:.2f} MiB" + ("" if kill["complete"] else " (copy INCOMPLETE)")
    ratio = restore["drive"]["seconds"] / restore["local"]["seconds"]
    rows = [
        ("measure", "value", "target", ""),
        ("database / repository",
         f"{f['size']} / {f['repository_bytes'] / MB:.1f} MB, packs of {f['pack_size'] // mib} MiB"
         + ("" if f.get("pack_size_given", True) else " (the default)"), "", ""),
        *_backup_row(f.get("backup")),
        ("upload: throughput (median)",
         f"{up['mb_per_s']:.1f} MB/s ({up['sent_bytes'] / MB:.1f} MB in {up['seconds']:.2f} s; runs {runs})",
         "", ""),
        ("upload: CPU of capsule sync",
         f"{up['cpu_seconds']:.2f} s user+sys, {per_cpu:.0f} MB per CPU second "
         f"(the fake server: {up['fake_cpu_seconds']:.2f} s)", "", ""),
        ("upload: peak RSS of capsule sync", f"{up['peak_rss_bytes'] / MB:.0f} MB", "", ""),
        ("requests per pack", per_pack, "", ""),
        ("requests per GiB of packs", f"{per_gib:.0f}", f"<= {TARGET_REQUESTS_PER_GIB}",
         _verdict(per_gib <= TARGET_REQUESTS_PER_GIB)),
        ("requests, whole sync", whole, "", ""),
        ("resent after a dropped connection", f"{drop['resent_bytes'] / mib:.2f} MiB", one_chunk,
         _verdict(0 <= drop["resent_bytes"] <= chunk)),
        ("resent after kill -9 and a restart", killed, one_chunk,
         _verdict(kill["held"] and kill["complete"] and 0 <= kill["resent_bytes"] <= chunk)),
        ("restore from the local repository (median)", _timed(restore["local"], rss_too=True), "", ""),
        ("restore from Drive (median)",
         f"{_timed(restore['drive'], rss_too=True)}, {ratio:.2f}x the local's time, "
         f"{restore['drive'].get('requests', '?')} requests", "", ""),
    ]  # fmt: skip
    rows += _copy_rows(f["rclone"])
    print("\n".join(align_columns(rows)))
    if "note" in f["rclone"]:
        print(f"(folder copies: {f['rclone']['note']}; capsule sync also fsyncs every file and writes a copy "
              "of its event log, rclone does neither)")  # fmt: skip


def _backup_row(backup: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if backup is None:
        return []
    value = (f"{backup['seconds']:.2f} s, CPU {backup['cpu_seconds']:.2f} s, "
             f"peak RSS {backup['peak_rss_bytes'] / MB:.0f} MB")  # fmt: skip
    return [("first backup (one run)", value, "", "")]


def _copy_rows(copies: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in copies:
        return [("folder copy, rclone against capsule sync", f"not measured: {copies['skipped']}", "", "")]
    rows = []
    for tool, label in (("rclone", "rclone copy"), ("capsule", "capsule sync")):
        c = copies[tool]
        runs = ", ".join(f"{s:.2f}" for s in c["runs_seconds"])
        done = "" if c["complete"] else " (copy INCOMPLETE)"
        value = f"{_timed(c)}, peak RSS {c['peak_rss_bytes'] / MB:.0f} MB; runs {runs}{done}"
        rows.append((f"folder copy: {label} (median)", value, "", ""))
    return rows


if __name__ == "__main__":
    sys.exit(main())
