"""Which process owns a claim or a temporary file: host:pid, so that what a process of this
host left behind when it died can be taken over or cleaned up at once."""

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading

PARENT = "ABLATE_PARENT_PID"  # set by whatever started a worker: the worker stops when that process dies


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def gone(owner_id: str | None) -> bool:
    """True only for a process of this host that no longer exists (another host's is unknown)."""
    host, _, pid = (owner_id or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def alive_here(owner_id: str | None) -> bool:
    """True for a process of this host that still exists."""
    host, _, pid = (owner_id or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not gone(owner_id)


def watched_by_me() -> dict[str, str]:
    """The environment of a child worker that must stop (SIGTERM) when this process dies."""
    return {**os.environ, PARENT: str(os.getpid())}


def stop_with_parent() -> None:
    """In a worker started with `watched_by_me`: SIGTERM this process when its starter dies (a
    killed launcher's worker then hands its claim back instead of running on unwatched)."""
    parent = os.environ.pop(PARENT, None)
    if parent is None:
        return
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


class StopRequest:
    """Whether a SIGTERM arrived inside `sigterm_deferred`'s block."""

    requested = False


@contextlib.contextmanager
def sigterm_deferred():
    """SIGTERM inside the block is only noted (`.requested`): a training step runs to its end
    before the trainer saves a checkpoint and stops, as schedulers expect between their SIGTERM
    and their SIGKILL. Outside the main thread, where signals cannot be handled, it changes nothing."""
    noted = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def note(signum, frame) -> None:
        noted.requested = True

    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGTERM, previous)


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for reuse rather than hand each large block back to
    the OS. A training step on a CPU frees and allocates the same large tensors every step; a
    block mapped afresh is zero-filled page by page on first touch (retention at Strawberry's
    shape spent 12 s of a 29 s bench in the kernel so). The cost: the process keeps its peak
    memory. Does nothing where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-4, 0)  # M_MMAP_MAX: no block is mapped on its own; all come from the heap ...
    mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: ... and the heap's top is not trimmed below 2 GiB
