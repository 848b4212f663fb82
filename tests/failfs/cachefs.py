#!/usr/bin/env python3
"""A FUSE file system whose files behave like a disk with a volatile write cache.

    cachefs.py BACKING MOUNTPOINT CONTROL

Every operation passes through to BACKING, except the data of writes: a write is
held in memory, sector by sector (512 bytes), until an fsync of any file makes
every held write durable (as a device's cache flush does) by writing it to
BACKING. Reads see the newest data. What BACKING holds is what the "disk" holds.

The power cut: once the file CONTROL/cut exists (it holds `MODE SEED`), the next
operation that looks for it (every write, fsync, read and statfs; `os.statvfs`
of the mount pokes it) decides the fate of every held sector and writes the
survivors to BACKING. A `drop` or `torn` cut waits until something is held (a
cut then always has something to destroy), unless it says `MODE SEED force`:

    keep  every held sector survives, in its newest version (a process crash);
    drop  none survives;
    torn  each held sector independently keeps its durable content or one of the
          versions written since the last flush, chosen at random from SEED: a
          device that wrote some of its cache, in any order, and tore writes at
          sector boundaries.

From then on the device is off: every write, fsync and read fails with EIO,
until CONTROL/cut is removed. The cut writes CONTROL/cut-done, one line of
`held H changed C` (sectors held, and how many of those now hold something else
than their newest version: what the cut destroyed). The mount uses FUSE's
`direct_io`, so the kernel caches none of the files' pages: after the cut, reads
come from what survived.

A loop device over an image file on the mount is then a block device with a
volatile write cache, and a file system on it can be power-cut
(`tests/wal_crash.rs`). Needs root, /dev/fuse, libfuse3 and mfusepy
(scripts/install-test-deps.sh installs the last two).
"""
import errno
import os
import random
import sys
import threading

import mfusepy as fuse

from passthrough import Passthrough

SECTOR = 512


def die(msg):
    """Stops the daemon at once: an exception in an operation would only fail
    that operation, and a test must not go on with a cut that did not happen."""
    print(f"cachefs: {msg}", file=sys.stderr, flush=True)
    os._exit(2)


class CacheFS(Passthrough):
    def __init__(self, root, control):
        super().__init__(root)
        self.control = control
        self.mutex = threading.Lock()
        # (st_dev, st_ino) -> {sector: [version, ...]} (oldest first), and an fd
        # of the same file to write survivors with.
        self.held = {}
        self.fds = {}
        self.dead = False

    # ---- the power cut -------------------------------------------------------

    def _check_cut(self):
        """Called with the lock held. Raises EIO while the device is off."""
        cut = os.path.join(self.control, "cut")
        try:
            with open(cut) as f:
                spec = f.read().split()
        except FileNotFoundError:
            self.dead = False
            return
        if not self.dead:
            if len(spec) not in (2, 3) or spec[2:] not in ([], ["force"]):
                die(f"{cut} holds {spec!r}, not `MODE SEED [force]`")
            if spec[0] != "keep" and not spec[2:] and not any(self.held.values()):
                # Nothing unflushed to lose yet: the cut waits for a write.
                return
            self._cut(spec[0], int(spec[1]))
            self.dead = True
        raise fuse.FuseOSError(errno.EIO)

    def _cut(self, mode, seed):
        if mode not in ("keep", "drop", "torn"):
            die(f"unknown cut mode {mode!r}")
        rng = random.Random(seed)
        held = changed = 0
        for key, sectors in self.held.items():
            fd = self.fds[key]
            for sector in sorted(sectors):
                versions = sectors[sector]
                held += 1
                if mode == "keep":
                    pick = len(versions)
                elif mode == "drop":
                    pick = 0
                else:
                    pick = rng.randint(0, len(versions))
                if pick > 0:
                    os.pwrite(fd, versions[pick - 1], sector * SECTOR)
                if pick < len(versions):
                    changed += 1
        self.held.clear()
        tmp = os.path.join(self.control, "cut-done.tmp")
        with open(tmp, "w") as f:
            f.write(f"held {held} changed {changed}\n")
        os.rename(tmp, os.path.join(self.control, "cut-done"))

    # ---- data ------------------------------------------------------------------

    def _key(self, fh):
        st = os.fstat(fh)
        key = (st.st_dev, st.st_ino)
        if key not in self.fds:
            self.fds[key] = os.dup(fh)
        return key

    def write(self, path, data, offset, fh):
        with self.mutex:
            self._check_cut()
            key = self._key(fh)
            end = offset + len(data)
            # The size is metadata: it changes at once (the image's never does).
            if end > os.fstat(fh).st_size:
                os.ftruncate(fh, end)
            sectors = self.held.setdefault(key, {})
            first = offset // SECTOR
            last = (end - 1) // SECTOR
            for s in range(first, last + 1):
                lo, hi = s * SECTOR, (s + 1) * SECTOR
                if offset <= lo and hi <= end:
                    content = bytes(data[lo - offset : hi - offset])
                else:
                    # A partial sector: start from what a read sees now.
                    base = bytearray(self._read_locked(key, fh, SECTOR, lo).ljust(SECTOR, b"\0"))
                    a, b = max(lo, offset), min(hi, end)
                    base[a - lo : b - lo] = data[a - offset : b - offset]
                    content = bytes(base)
                sectors.setdefault(s, []).append(content)
            return len(data)

    def _read_locked(self, key, fh, size, offset):
        buf = bytearray(os.pread(fh, size, offset))
        sectors = self.held.get(key)
        if not sectors or size == 0:
            return bytes(buf)
        end = offset + size
        size_now = os.fstat(fh).st_size
        if len(buf) < min(end, size_now) - offset:
            buf = buf.ljust(min(end, size_now) - offset, b"\0")
        for s in range(offset // SECTOR, (end - 1) // SECTOR + 1):
            versions = sectors.get(s)
            if not versions:
                continue
            lo = s * SECTOR
            a, b = max(lo, offset), min(lo + SECTOR, offset + len(buf))
            if a < b:
                buf[a - offset : b - offset] = versions[-1][a - lo : b - lo]
        return bytes(buf)

    def read(self, path, size, offset, fh):
        with self.mutex:
            self._check_cut()
            return self._read_locked(self._key(fh), fh, size, offset)

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self._check_cut()
            # A cache flush: everything held reaches the disk.
            for key, sectors in self.held.items():
                fd = self.fds[key]
                for sector, versions in sectors.items():
                    os.pwrite(fd, versions[-1], sector * SECTOR)
            self.held.clear()
            return 0

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self._check_cut()
            os.truncate(self._p(path), length)
            st = os.stat(self._p(path))
            sectors = self.held.get((st.st_dev, st.st_ino), {})
            for s in [s for s in sectors if s * SECTOR >= length]:
                del sectors[s]

    def statfs(self, path):
        with self.mutex:
            try:
                self._check_cut()
            except fuse.FuseOSError:
                pass
        return self._statfs(path)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: cachefs.py BACKING MOUNTPOINT CONTROL")
    root, mountpoint, control = sys.argv[1:4]
    fuse.FUSE(CacheFS(root, control), mountpoint, foreground=True, direct_io=True)
