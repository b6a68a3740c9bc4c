"""A sealing worker whose parent died while it answered exits quietly (a killed step's terminal
must not show a second, misleading traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

from capsule.adapters.workers.sealworker import FRAME, HEAD, OP_HASH


def test_a_worker_whose_reader_is_gone_exits_without_a_traceback(tmp_path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(8192))
    proc = subprocess.Popen(
        [sys.executable, "-m", "capsule.adapters.workers.sealworker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    init = os.urandom(64) + bytes((1,))
    path = str(data).encode()
    request = HEAD.pack(OP_HASH, 1) + FRAME.pack(len(path)) + path + (0).to_bytes(8, "little")
    request += (8192).to_bytes(4, "little") + (4096).to_bytes(4, "little")
    proc.stdin.write(FRAME.pack(len(init)) + init + FRAME.pack(len(request)) + request)
    proc.stdout.close()  # as if the parent had been killed: its end of the pipe is gone
    proc.stdin.close()

    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""
