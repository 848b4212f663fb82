#!/usr/bin/env python3
"""A FUSE file system whose files behave like a disk with a volatile write cache.

    cachefs.py BACKING MOUNTPOINT CONTROL

Every operation passes through to BACKING, except the data of writes: a write is
held in memory, sector by sector (512 bytes), until an fsync of any file makes
every held write durable (as a device's cache flush does) by writing it to
BACKING. Reads see the newest data. What BACKING holds is what the "disk" holds.

The power cut: once the file CONTROL/cut exists (it holds `MODE SEED [after=N]
[writes=W]` or `MODE SEED force`), the next operation that looks for it (every
write, fsync, read and statfs; `os.statvfs` of the mount pokes it) takes the
order. A `keep` cut, or a forced one, comes at once. A `drop` or `torn` cut
comes at a write the daemon receives after the order, once that write's data is
held (so that the cut always has something to destroy): the first that is at
least the Nth and leaves at least W writes held since the last flush, itself
included, or else the (N+64)th (N and W are 1 unless given); the flushes in
between go through. A writer that flushes after nearly every write has several
writes held together only now and then, while it keeps more than one in flight:
a cut that waits for such a moment finds what a device's cache holds then, and
may keep a later write and lose an earlier one. The cut decides the fate of
every held sector and writes the survivors to BACKING:

    keep  every held sector survives, in its newest version (a process crash);
    drop  none survives;
    torn  each held sector independently keeps its durable content or one of the
          versions written since the last flush, chosen at random from SEED: a
          device that wrote some of its cache, in any order, and tore writes at
          sector boundaries.

From then on the device is off: every write, fsync and read fails with EIO
(the write that cut too), until CONTROL/cut is removed. The cut writes
CONTROL/cut-done, one line of `held H changed C writes W`: the sectors held, how
many of those now hold something else than their newest version (what the cut
destroyed), and the writes held, that is the write requests received since the
last flush, whose data the cut decided (FUSE splits a write larger than its
maximum write size into several requests). The mount uses FUSE's `direct_io`,
so the kernel caches none of the files' pages: after the cut, reads come from
what survived.

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
# How many writes past its Nth a cut waits for one that leaves W writes held,
# before it comes anyway: a writer that never has two writes in flight must
# still be cut, soon.
PATIENCE = 64


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
        # Write requests received since the last flush: every one of them has
        # data held (a truncate of held sectors aside, which the image never
        # sees).
        self.writes = 0
        # The drop or torn cut ordered and waiting for its write: [mode, seed,
        # after, writes, writes received since the order].
        self.order = None
        self.dead = False

    # ---- the power cut -------------------------------------------------------

    def _check_cut(self):
        """Called with the lock held, by every operation before it acts. Takes a
        cut order, and raises EIO while the device is off."""
        cut = os.path.join(self.control, "cut")
        try:
            with open(cut) as f:
                spec = f.read().split()
        except FileNotFoundError:
            self.dead = False
            self.order = None
            return
        if not self.dead:
            order = self._parse(cut, spec)
            if order is None:
                self._cut(spec[0], int(spec[1]))
            else:
                if self.order is None or self.order[:4] != order:
                    self.order = order + [0]
                return
        raise fuse.FuseOSError(errno.EIO)

    def _wrote(self):
        """Called with the lock held, by a write once its data is held. A
        waiting cut comes at its write, which then fails with EIO: the device
        lost power before it acknowledged the write."""
        self.writes += 1
        if self.order is None:
            return
        self.order[4] += 1
        mode, seed, after, writes, seen = self.order
        if seen >= after and (self.writes >= writes or seen >= after + PATIENCE):
            self._cut(mode, seed)
            raise fuse.FuseOSError(errno.EIO)

    @staticmethod
    def _parse(cut, spec):
        """A cut order as [mode, seed, after, writes] for a cut that waits for
        its write, or None for one that comes at once (a keep or a forced one)."""
        usage = (
            f"{cut} holds {spec!r}, not `MODE SEED [after=N] [writes=W]` or "
            "`MODE SEED force`"
        )
        if len(spec) < 2:
            die(usage)
        mode, opts = spec[0], spec[2:]
        if mode not in ("keep", "drop", "torn"):
            die(f"unknown cut mode {mode!r}")
        try:
            seed = int(spec[1])
            if opts == ["force"]:
                return None
            given = dict(opt.split("=", 1) for opt in opts)
            if len(given) != len(opts) or not set(given) <= {"after", "writes"}:
                die(usage)
            after = int(given.get("after", 1))
            writes = int(given.get("writes", 1))
        except ValueError:
            die(usage)
        if after < 1 or writes < 1:
            die(usage)
        return None if mode == "keep" else [mode, seed, after, writes]

    def _cut(self, mode, seed):
        """The power cut itself: from here on the device is off."""
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
        writes = self.writes
        self.held.clear()
        self.writes = 0
        self.order = None
        self.dead = True
        tmp = os.path.join(self.control, "cut-done.tmp")
        with open(tmp, "w") as f:
            f.write(f"held {held} changed {changed} writes {writes}\n")
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
            self._wrote()
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
            self.writes = 0
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
