"""Files only the node's user may read: every secret of a node home (keys, tokens, config) is written here.

`write_secret` writes a file 0600 atomically (temp file in the same directory, fsync, rename) whatever the
umask, creating missing parent directories 0700. Shared by the runtime (keys, config), the RPC token
store, `radchain init`/`secrets` and the testnet builder; node.runtime.keys checks the modes at start.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path, *, tighten: bool = True) -> Path:
    """`path` and any missing parents created 0700 (umask ignored); an existing `path` is tightened to 0700
    unless `tighten` is false."""
    missing = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask; chmod is not
    if not missing and tighten:
        os.chmod(path, DIR_MODE)
    return Path(path)


def write_secret(path: Path, data: bytes | str, *, exclusive: bool = False) -> Path:
    """Write `data` to `path` with mode 0600, atomically: a reader (or a crash) sees the old file or the new
    one, never a partial or world-readable one. `exclusive` refuses to replace an existing file."""
    path = Path(path)
    if not path.parent.exists():
        make_private_dir(path.parent)
    if exclusive and path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite a secret")
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        os.fchmod(fd, SECRET_MODE)  # O_CREAT's mode is masked by the umask (harmlessly: it only clears bits)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path appeared meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    finally:
        os.close(dfd)
    return path
