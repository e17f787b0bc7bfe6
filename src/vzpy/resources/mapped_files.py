"""Mappings of files that were deleted while mapped.

A VMA of a regular file keeps its data in the file (resources/memory.py
reopens the path in the task and maps it again; a MAP_SHARED mapping then
writes through to the same file as before).  When the file was unlinked,
``/proc/PID/maps`` shows ``PATH (deleted)`` (the vma record's ``deleted``)
and no path reaches it any more:
its contents travel in the image as a ghost file, like an open deleted file
(resources/files.py ``DeletedFiles``), keyed by inode so that an fd and a
mapping of one deleted file, in one task or several, get one inode back.

Dump (``DeletedMappedFile.dump``, called by memory.py for such a VMA): the
contents are read through ``/proc/PID/map_files/START-END`` (the file itself,
whatever its name) into ghost_file-INO.img, once per inode.

Restore (``map``, instead of memory.py's open-by-path): the restorer re-makes
the inode (``DeletedFiles.inode_fd``: created under a temporary name in the
file's directory, filled, unlinked), hands it to the task through the fd
channel and the task maps it at the dumped address and offset; a private
mapping's own (copied-on-write) pages are then written by memory.py as for
any private file mapping.
"""

from __future__ import annotations

import os
import stat

from ..errors import RestoreError
from . import memory as res_memory


class DeletedMappedFile:
    name = "deleted_file_vma"

    def match(self, rec: dict) -> bool:
        return rec.get("kind") in ("file", "file_shared") and bool(rec.get("deleted"))

    def dump(self, ctx, proc, vma, rec: dict) -> None:
        key = rec["ino"]
        if key in ctx.deleted_files.saved:
            return
        fd = os.open(
            f"/proc/{proc.pid}/map_files/{vma.start:x}-{vma.end:x}", os.O_RDONLY | os.O_CLOEXEC
        )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return  # e.g. a deleted device node: memory.py's usual path will tell
            chunks = []
            off = 0
            while True:
                b = os.pread(fd, 1 << 20, off)
                if not b:
                    break
                chunks.append(b)
                off += len(b)
        finally:
            os.close(fd)
        ctx.img.write(
            "ghost_file", {"ino": key, "mode": st.st_mode, "data": b"".join(chunks)}, name=str(key)
        )
        ctx.deleted_files.saved[key] = f"ghost-{key}"

    def map(self, rctx, task, inj, rec: dict) -> None:
        path = rec["path"]
        if not rctx.img.has("ghost_file", str(rec["ino"])):
            raise RestoreError(
                f"The contents of deleted file {path} mapped by task {task.pid} are not in the image"
            )
        ours = rctx.deleted_files.inode_fd(rctx, rec["ino"], path)
        theirs = rctx.channel.send([ours])[0]
        try:
            flags = (
                rec["flags"]
                & (res_memory.MAP_SHARED | res_memory.MAP_PRIVATE | res_memory.MAP_NORESERVE)
            ) | res_memory.MAP_FIXED
            inj.mmap(
                rec["start"],
                rec["end"] - rec["start"],
                rec["prot"],
                flags,
                theirs,
                rec["pgoff"] * 4096,
            )
        finally:
            inj.close_fd(theirs)


res_memory.register_vma_handler(DeletedMappedFile())
