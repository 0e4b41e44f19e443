"""Claiming a Unix socket path before bind(): the RPC socket and every vhost
socket go through here, so a typo in a config or an RPC can never unlink a
file that is not ours (a disk image, another controller's live socket).

Only a *stale* socket may be replaced: a socket inode on which nobody listens
(connect() is refused). Anything else at the path is refused with a message
that names what is there.
"""

from __future__ import annotations

import errno
import os
import socket
import stat


class SocketPathError(OSError):
    """errno plus a message that reads well on its own (no "[Errno N]")."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _probe(path: str) -> str:
    """'live', 'stale' or 'gone' for a socket inode at path."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.setblocking(False)  # a full backlog must answer EAGAIN, not block us
    try:
        s.connect(path)
    except (BlockingIOError, InterruptedError):
        return "live"  # someone listens, its backlog is just full
    except ConnectionRefusedError:
        return "stale"
    except FileNotFoundError:
        return "gone"
    except OSError as e:
        raise SocketPathError(e.errno, f"{path}: cannot tell whether a server listens on this "
                               f"socket ({os.strerror(e.errno or 0)}); not replacing it") from None
    finally:
        s.close()
    return "live"


def claim(path: str, what: str) -> None:
    """Make path free for bind(): nothing there, or a stale socket that is
    removed. Raises OSError (with a message naming `what` and the path) when
    the path holds a live socket or anything that is not a socket."""
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        raise SocketPathError(errno.ENOENT, f"{what} {path}: directory {d} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory"
                if stat.S_ISDIR(st.st_mode) else "a regular file" if stat.S_ISREG(st.st_mode)
                else "not a socket")
        raise SocketPathError(errno.EEXIST, f"{what} {path} exists and is {kind}: refusing to replace it "
                                    "(remove it or choose another path)")
    state = _probe(path)
    if state == "live":
        raise SocketPathError(errno.EADDRINUSE, f"{what} {path} is a live socket (another controller is "
                                        "serving it, or another program): refusing to take it over")
    if state == "stale":
        try:
            os.unlink(path)  # a socket nobody listens on: left by a killed process
        except FileNotFoundError:
            pass


def identity(path: str) -> tuple:
    """(st_dev, st_ino) of the socket just bound at path, for release()."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def release(path: str, ident: tuple) -> None:
    """Unlink path only if it is still the socket we bound (ident): a path
    someone reused since then is theirs."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident and stat.S_ISSOCK(st.st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
