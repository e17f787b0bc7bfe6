"""The VzError hierarchy.

Every error the tools can report is a VzError carrying the vzctl 4.x exit code
(``include/vzerror.h``) and whatever context helps the admin: container id,
pid, phase.  The CLI maps them to a one-line message and the exit code in one
place (``vzpy.cli.common``); library code never calls ``sys.exit``.
"""

from __future__ import annotations

# vzctl 4.x exit codes (vzctl-reference.md §1.6).  Names follow vzerror.h.
VZ_SYSTEM_ERROR = 3
VZ_RESOURCE_ERROR = 6
VZ_EXEC_ERROR = 8  # `vzctl exec` command returned non-zero
VZ_LOCKED = 9
VZ_NOCONFIG = 10
VZ_NOSCRIPT = 11
VZ_PERM_DENIED = 12
VZ_NO_CONFFILE = 14
VZ_EXEC_TIMEOUT = 15
VZ_CHKPNT_ERROR = 16
VZ_RESTORE_ERROR = 17
VZ_INVALID_PARAMETER_SYNTAX = 20
VZ_INVALID_PARAMETER_VALUE = 21
VZ_VE_ROOT_NOTSET = 22
VZ_VE_PRIVATE_NOTSET = 23
VZ_VE_TMPL_NOTSET = 24
VZ_VE_OSTEMPLATE_NOTSET = 29
VZ_VE_NOT_RUNNING = 31
VZ_VE_RUNNING = 32
VZ_STOP_ERROR = 33
VZ_CANT_ADDIP = 34
VZ_FS_NOT_MOUNTED = 40
VZ_FS_MOUNTED = 41
VZ_FS_NOPRVT = 43
VZ_FS_PRVT_AREA_EXIST = 44
VZ_FS_NO_DISK_SPACE = 46
VZ_FS_BAD_TMPL = 47
VZ_FS_NEW_VE_PRVT = 48
VZ_FS_NEW_VE_ROOT = 49
VZ_FS_MOUNT_ERROR = 50
VZ_FS_UMOUNT_ERROR = 51
VZ_FS_DEL_PRVT = 52
VZ_CANT_CREATE_DIR = 54
VZ_BADHOSTNAME = 70
VZ_BADIP = 71
VZ_BADDNSSRV = 72
VZ_BADDNSSEARCH = 73
VZ_IP_INUSE = 78
VZ_ACTIONSCRIPT_ERROR = 79
VZ_CP_CONFIG = 82
VZ_INVALID_CONFIG = 85
VZ_OSTEMPLATE_NOTFOUND = 91
VZ_START_DISABLED = 105
VZ_VETH_ERROR = 130
VZ_NAME_ERROR = 131
VZ_WAIT_FAILED = 133
VZ_CONFIG_SAVE_ERROR = 139


class VzError(Exception):
    """An error with a vzctl exit code and a message meant for the admin."""

    exit_code: int = VZ_SYSTEM_ERROR

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        ctid: int | None = None,
        pid: int | None = None,
        phase: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        self.ctid = ctid
        self.pid = pid
        self.phase = phase

    def __str__(self) -> str:
        return self.message


class UsageError(VzError):
    exit_code = VZ_INVALID_PARAMETER_SYNTAX


class BadValueError(VzError):
    exit_code = VZ_INVALID_PARAMETER_VALUE


class ConfigError(VzError):
    exit_code = VZ_NOCONFIG


class LockedError(VzError):
    exit_code = VZ_LOCKED


class NotRunningError(VzError):
    exit_code = VZ_VE_NOT_RUNNING


class RunningError(VzError):
    exit_code = VZ_VE_RUNNING


class CheckpointError(VzError):
    """A dump failed; the container was thawed and keeps running."""

    exit_code = VZ_CHKPNT_ERROR


class UnsupportedError(CheckpointError):
    """The container holds state that vzpy cannot yet save; refused at dump time."""


class RestoreError(VzError):
    exit_code = VZ_RESTORE_ERROR


class ImageError(RestoreError):
    """A checkpoint image is missing, damaged, of another container or too new."""


class KernelError(VzError):
    """A syscall failed where it should not; carries errno."""

    def __init__(self, message: str, errno: int = 0, **kw) -> None:
        super().__init__(message, **kw)
        self.errno = errno


class MigrateError(VzError):
    """vzmigrate failure; exit codes are vzmigrate's own (§4.3)."""

    exit_code = 1
