"""A tiny initramfs, written in Python as a gzipped "newc" cpio archive (no cpio binary, no root
needed for device nodes): busybox, /dev/console and an init that prints a tick counter and the
guest's uptime to the serial console once a second, forever."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
n=0
while :; do
  n=$((n+1))
  read up rest < /proc/uptime
  echo "tick $n uptime $up"
  /bin/busybox sleep 1
done
"""

TICK_PATTERN = r"tick (\d+) uptime ([0-9.]+)"


def _entry(ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
           ) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def write_initramfs(path: Path, busybox: Path) -> None:
    entries = [
        ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("proc", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), (0, 0)),
        ("init", stat.S_IFREG | 0o755, INIT.encode(), (0, 0)),
    ]
    archive = b"".join(_entry(i, name, mode, data, rdev)
                       for i, (name, mode, data, rdev) in enumerate(entries, start=1))
    archive += _entry(len(entries) + 1, "TRAILER!!!", 0)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(archive, compresslevel=6))
    tmp.replace(path)
