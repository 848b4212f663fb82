#!/usr/bin/env python3
"""A FUSE file system over a backing directory whose writes fail on demand.

    failfs.py BACKING MOUNTPOINT FLAG [write-through]

Every operation passes through to BACKING, except that while the file FLAG
exists (it lives outside the mount) every write fails, with the errno number
FLAG holds (EIO when it is empty), while FLAG-reads exists every read
fails the same way, and while FLAG-fsyncs exists every fsync. The kernel's
write-back cache is on, so a write(2) lands in the page cache and succeeds; the
failure comes when the kernel writes the pages back (at close, fsync or later)
and is recorded against the file the way a failing disk's would be: reported to
whoever syncs the file next. The segment and WAL tests use it to leave a real
write-back failure behind (`src/storage/segment.rs`, `src/wal/mod.rs`).

With `write-through` the write-back cache stays off and each write(2) fails
itself: a loop device over an image file on the mount is then a block device
whose writes fail on demand, and ext4 on it meets real I/O errors
(`FailingExt4` in `src/file_at.rs`). Needs root, /dev/fuse, libfuse3 and
mfusepy (scripts/install-test-deps.sh installs the last two).
"""
import errno
import os
import sys

import mfusepy as fuse

from passthrough import Passthrough

FUSE_CAP_WRITEBACK_CACHE = 1 << 16


class FailFS(Passthrough):
    def __init__(self, root, flag, write_back):
        super().__init__(root)
        self.flag = flag
        self.write_back = write_back

    def init_with_config(self, conn, config):
        if not self.write_back:
            return
        if not conn.capable & FUSE_CAP_WRITEBACK_CACHE:
            sys.exit("failfs: the kernel offers no write-back cache")
        conn.want |= FUSE_CAP_WRITEBACK_CACHE

    def statfs(self, path):
        return self._statfs(path)

    def _fail_if(self, flag):
        try:
            with open(flag) as f:
                raise fuse.FuseOSError(int(f.read().strip() or errno.EIO))
        except FileNotFoundError:
            pass

    def read(self, path, size, offset, fh):
        self._fail_if(self.flag + "-reads")
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._fail_if(self.flag)
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._p(path), length)

    def fsync(self, path, datasync, fh):
        self._fail_if(self.flag + "-fsyncs")
        os.fsync(fh)
        return 0


if __name__ == "__main__":
    root, mountpoint, flag = sys.argv[1:4]
    mode = sys.argv[4:5]
    if mode not in ([], ["write-through"]):
        sys.exit(f"failfs: unknown mode {mode[0]!r}")
    fuse.FUSE(FailFS(root, flag, write_back=not mode), mountpoint, foreground=True)
