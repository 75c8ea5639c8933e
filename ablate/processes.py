"""Which process owns a claim or a temporary file: host:pid, so that what a process of this
host left behind when it died can be taken over or cleaned up at once."""

import os
import socket


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
