"""Process plumbing shared by the instance runner and the local stack (Linux only)."""

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent exits, however it exits.

    Kept across exec, so it also covers commands started from a forked child. Call it in the
    child right after fork; a parent that died before the call is caught by checking the pid.
    """
    if _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
