"""Registries through which resource modules plug into the dump and restore drivers.

A module that saves one kind of kernel object registers itself here at import
time; the drivers call every registered object at fixed points, so adding a
kind of object never touches the drivers.

``CtResource`` — container-wide state (namespaces, mounts, SysV IPC...):
    dump(ctx)                  after every process was dumped, tree still seized
    dump_finish(ctx, ok, leave)  the dump is over (ok) or failed (not ok); tree
                               still seized, network still locked; leave is
                               'kill', 'frozen' or 'running'
    resume_dumped(ct)          ``chkpnt --resume`` after ``--dump``: before the
                               network is unlocked and the tree thawed
    restore_network(rctx, pid) -> bool   the new netns exists, the veth's inner
                               end is in it (down): True if the container side
                               was configured (else the driver does it from the
                               config)
    prepare(rctx, spec)        before the restore stub is spawned (e.g. mounts)
    restore_early(rctx)        stub exists and is seized, tree not built yet
    session_created(rctx, task)  restore: `task` has just called setsid(), none
                               of its children exists yet (tty.py: TIOCSCTTY,
                               so that they inherit the controlling terminal)
    restore_tree(rctx)         every task exists (a bare copy of the stub, seized),
                               none restored yet: calls injected there run with
                               the dumped pids (unix.py: SO_PEERCRED)
    restore_late(rctx)         every task restored, registers not yet set
    after_release(rctx)        tasks run (or are frozen): e.g. lift a lock
    cleanup(rctx)              restore failed: undo what restore_* made

``TaskResource`` — extra per-process state, in its own image file NAME-PID.img:
    dump(ctx, proc, inj) -> dict | None      (None: nothing to save)
    restore(rctx, task, inj, rec)            in the leader, before credentials

``fds`` have their own registry in files.py (``register_fd_kind``).
"""

from __future__ import annotations


class CtResource:
    name = "?"
    order = 50  # lower runs first

    def dump(self, ctx) -> None:  # noqa: B027
        pass

    def dump_finish(self, ctx, ok: bool, leave: str) -> None:  # noqa: B027
        pass

    def resume_dumped(self, ct) -> None:  # noqa: B027
        pass

    def prepare(self, rctx, spec) -> None:  # noqa: B027
        pass

    def restore_network(self, rctx, pid: int) -> bool:
        return False

    def restore_early(self, rctx) -> None:  # noqa: B027
        pass

    def session_created(self, rctx, task) -> None:  # noqa: B027
        pass

    def restore_tree(self, rctx) -> None:  # noqa: B027
        pass

    def restore_late(self, rctx) -> None:  # noqa: B027
        pass

    def after_release(self, rctx) -> None:  # noqa: B027
        pass

    def cleanup(self, rctx) -> None:  # noqa: B027
        pass


class TaskResource:
    name = "?"  # also the record type name of its image files
    order = 50

    def dump(self, ctx, proc, inj) -> dict | None:
        raise NotImplementedError

    def restore(self, rctx, task, inj, rec: dict) -> None:
        raise NotImplementedError


CT_RESOURCES: list[CtResource] = []
TASK_RESOURCES: list[TaskResource] = []


def register_ct_resource(r: CtResource) -> CtResource:
    CT_RESOURCES.append(r)
    CT_RESOURCES.sort(key=lambda x: x.order)
    return r


def register_task_resource(r: TaskResource) -> TaskResource:
    TASK_RESOURCES.append(r)
    TASK_RESOURCES.sort(key=lambda x: x.order)
    return r
