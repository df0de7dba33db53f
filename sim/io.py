"""Writing files and folders atomically: a reader (or an interrupted run) never sees half a file or half a set.

A file is written to a temporary sibling (``.<name>.<pid>.<random>.tmp``), made durable, and renamed over its
target. A set of files (``atomic_folder``) is written into a temporary sibling folder named the same way and
renamed into place at the end; replacing an existing set swaps the two folders in one step where the kernel can
(Linux ``renameat2(RENAME_EXCHANGE)``). The writer's pid in a temporary name lets a later run remove what a killed
run left behind (``remove_stale``) without touching a temporary of a writer that is still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TextIO

from sim.errors import OutputError, output_error


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporaries for a target called ``name``."""
    return f".{name}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale(folder: str | Path, name: str, only_dead: bool = True) -> list[Path]:
    """Remove the temporaries (``.<name>.<pid>.*.tmp`` / ``.old``) a killed writer left in ``folder``.

    With ``only_dead`` those of a still-running pid (or of no recorded pid) are kept: they may be a concurrent
    writer's; without it every one goes (the caller holds the folder's lock). Returns what was removed."""
    removed = []
    prefix = f".{name}."
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        rest = p.name[len(prefix):] if p.name.startswith(prefix) else ""
        if not rest.endswith((".tmp", ".old")):
            continue
        pid = rest.split(".", 1)[0]
        if only_dead and (not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (best effort: some file systems refuse fsync on a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def open_atomic(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """A text file that appears at ``path`` only when the block ends without error (fsync, then rename)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.name), suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise output_error(p, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # writing the file or renaming it over the target (a folder, say)
            raise output_error(p, e) from None
        raise


def check_output_file(path: str | Path) -> None:
    """Fail now, before a long run, if ``path`` cannot become a file: it is a folder, or a file (or a folder
    without write permission) stands where its folder would be."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {p}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {p}: no permission to write in {parent}")
            return


def write_text_atomic(path: str | Path, text: str) -> None:
    with open_atomic(path) as f:
        f.write(text)


# --- sets of files -----------------------------------------------------------------------------------------------

def check_target_folder(target: str | Path, overwrite: bool, replaceable: Collection[str] | None = None) -> None:
    """Refuse, with one line, a target folder that exists and is not empty (unless ``overwrite``), or that holds
    anything but ``replaceable`` names (``overwrite`` replaces a set this command wrote, never other files)."""
    t = Path(target)
    if not t.exists() and not t.is_symlink():
        return
    if not t.is_dir():
        raise OutputError(f"cannot write {t}: it is a file, not a folder")
    try:
        names = sorted(p.name for p in t.iterdir())
    except OSError as e:
        raise output_error(t, e) from None
    if not names:
        return
    if not overwrite:
        raise OutputError(f"{t} already exists and is not empty; use --overwrite to replace it, or another --out")
    foreign = [n for n in names if replaceable is not None and n not in replaceable]
    if foreign:
        raise OutputError(f"{t} holds files this command did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); --overwrite replaces only a folder of its own "
                          f"output: choose another --out")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel or libc cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish_folder(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``; an existing set there is replaced as a whole."""
    try:
        if target.is_dir() and any(target.iterdir()):
            if _exchange(tmp, target):
                shutil.rmtree(tmp)  # now the old set
            else:
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".old", dir=target.parent))
                os.replace(target, old / target.name)
                os.replace(tmp, target)
                shutil.rmtree(old)
        else:
            os.replace(tmp, target)  # onto nothing, or onto an empty folder
    except OSError as e:
        raise output_error(target, e) from None
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False,
                  replaceable: Collection[str] | None = None) -> Iterator[Path]:
    """A temporary sibling folder to write a set of files into; renamed to ``target`` when the block ends without
    error, removed otherwise. See ``check_target_folder`` for when an existing target is refused."""
    t = Path(target)
    check_target_folder(t, overwrite, replaceable)
    try:
        t.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(t.parent, t.name)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(t.name), suffix=".tmp", dir=t.parent))
    except OSError as e:
        raise output_error(t, e) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an output folder is an ordinary folder
        yield tmp
        check_target_folder(t, overwrite, replaceable)  # another run may have filled it meanwhile
        publish_folder(tmp, t)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
