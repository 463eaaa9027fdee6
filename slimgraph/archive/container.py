"""The archive's byte layout: a sealed safetensors file, written atomically and read within bounds.

Layout (plain safetensors, readable by any safetensors reader)::

    u64 little-endian N | N bytes of JSON header, space padded | tensor bytes, back to back in header order

The header's ``__metadata__`` holds ``sha256``: the SHA-256 of the whole file with those 64 hex digits written
as zeros. Every byte of the file is covered, so any bit flip is detected before a single value is used. The
checksum is integrity, not authenticity: whoever edits a file can recompute it, which is why the loader also
validates everything against the schema (see docs/security.md).

Reading allocates nothing before the header is checked against the file's real size: the tensors' declared
byte ranges must tile the data section exactly, so the tensors together take exactly the file's data bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import sys
from pathlib import Path

import torch

from ..errors import ArchiveError
from .schema import MAX_ENTRIES, MAX_HEADER_BYTES, expect, int_list, parse_json, tensor_key

SEAL_KEY = "sha256"
_SEAL_HOLE = "0" * 64
_PARTIAL_SUFFIX = ".slimgraph-partial"
_CHUNK = 8 * 2**20
_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL", torch.complex64: "C64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


# ------------------------------------------------------------------------------------------------ write


def write_archive(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (CPU, contiguous) and ``metadata`` to ``path`` atomically, sealed with a checksum."""
    if sys.byteorder != "little":
        raise ArchiveError("archives are little-endian; saving from a big-endian machine is not supported")
    header, offset = {"__metadata__": {SEAL_KEY: _SEAL_HOLE, **metadata}}, 0
    for key, t in tensors.items():
        if t.dtype not in _CODES:
            raise ArchiveError(f"tensor {key!r} has dtype {t.dtype}, which archives cannot hold")
        size = t.numel() * t.element_size()
        header[key] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)  # safetensors pads its header so the data starts 8-byte aligned
    hole = text.index(f'"{SEAL_KEY}":"{_SEAL_HOLE}"'.encode()) + len(SEAL_KEY) + 4
    prefix = len(text).to_bytes(8, "little")

    def write(f):
        digest = hashlib.sha256(prefix + text)
        f.write(prefix + text)
        for t in tensors.values():
            for chunk in _byte_chunks(t):
                digest.update(chunk)
                f.write(chunk)
        f.seek(8 + hole)
        f.write(digest.hexdigest().encode())

    atomic_write(path, write)


def _byte_chunks(t: torch.Tensor):
    flat = t.detach().reshape(-1).view(torch.uint8).numpy()
    for start in range(0, len(flat), _CHUNK):
        yield memoryview(flat[start:start + _CHUNK])


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, and rename it over ``path``.

    The temporary file is created with mode 0666 so the process umask decides the final permissions, and is
    removed on any failure, interrupts included. A process killed outright cannot clean up: its partial file
    (named after the target and the writer's pid) is removed by the next save to the same path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(path)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_PARTIAL_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise ArchiveError(f"could not write {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit, ArchiveError)):
            raise
        raise ArchiveError(f"could not write {path}: {exc}") from exc


def _remove_stale_partials(path: Path) -> None:
    for partial in path.parent.glob(f".{path.name}.*{_PARTIAL_SUFFIX}"):
        pid = partial.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename itself already happened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ read


def read_archive(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header metadata and the tensors of a sealed archive; the checksum is verified before returning."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ArchiveError(f"no such file: {path}") from None
    except OSError as exc:
        raise ArchiveError(f"cannot open {path}: {exc}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"{path} is not a regular file")
        return _read(f, path, st.st_size)


def _unreadable(path: Path, why: str) -> ArchiveError:
    return ArchiveError(f"{path} is not a readable slimgraph archive ({why}). It may be truncated or corrupt, or a "
                        "file of another format (torch.save/pickle files are never loaded, for safety)")


def _read(f, path: Path, size: int):
    prefix = f.read(8)
    if len(prefix) < 8:
        raise _unreadable(path, f"only {size} bytes")
    n = int.from_bytes(prefix, "little")
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise _unreadable(path, f"header length {n} exceeds the file size {size} or the limit {MAX_HEADER_BYTES}")
    text = f.read(n)
    try:
        header = parse_json(text, f"{path}: header")
    except ArchiveError as exc:
        raise _unreadable(path, str(exc)) from None
    if not isinstance(header, dict):
        raise _unreadable(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _unreadable(path, "header metadata is not a string map")
    if metadata.get("format") != "slimgraph":
        raise ArchiveError(f"{path} is a safetensors file but not a slimgraph archive (no slimgraph metadata); "
                           "load plain state dicts with safetensors.torch.load_file")
    check_version(metadata, path)
    seal = metadata.get(SEAL_KEY)
    needle = f'"{SEAL_KEY}":"{seal}"'.encode()
    if not isinstance(seal, str) or len(seal) != 64 or text.count(needle) != 1:
        raise ArchiveError(f"{path}: file corrupted or tampered with (its checksum entry is missing or malformed)")
    digest = hashlib.sha256(prefix + text.replace(needle, f'"{SEAL_KEY}":"{_SEAL_HOLE}"'.encode()))
    try:
        layout = _layout(header, path, size - 8 - n)
    except ArchiveError as exc:
        raise _unreadable(path, str(exc)) from None
    tensors = {key: _read_tensor(f, digest, path, key, dtype, shape, nbytes) for key, dtype, shape, nbytes in layout}
    if digest.hexdigest() != seal:
        raise ArchiveError(f"{path}: file corrupted or tampered with (SHA-256 checksum mismatch); re-download or "
                           "re-save it")
    for key, t in tensors.items():
        if t.dtype == torch.bool and bool((t.view(torch.uint8) > 1).any()):
            raise ArchiveError(f"{path}: bool tensor {key!r} holds bytes other than 0 and 1")
    return metadata, tensors


def check_version(metadata: dict, path: Path) -> None:
    from . import FORMAT_VERSION

    version = metadata.get("format_version", "")
    if not version.isdigit() or len(version) > 6:
        raise ArchiveError(f"{path}: format_version {version[:20]!r} is not a version number; the file is corrupt")
    if int(version) < FORMAT_VERSION:
        raise ArchiveError(f"{path} uses archive format {version}, written before archives carried checksums; "
                           f"load it with the slimgraph that wrote it and save it again to get format "
                           f"{FORMAT_VERSION}")
    if int(version) > FORMAT_VERSION:
        raise ArchiveError(f"{path} uses archive format {version}; this slimgraph reads {FORMAT_VERSION}: upgrade "
                           "slimgraph")


def _layout(header: dict, path: Path, data_size: int) -> list[tuple[str, torch.dtype, list[int], int]]:
    """Validate every tensor entry against the real data size before anything is allocated."""
    if len(header) > MAX_ENTRIES:
        raise _unreadable(path, f"{len(header)} tensors (limit {MAX_ENTRIES})")
    entries, expected = [], 0
    for key, entry in sorted(header.items(), key=lambda kv: _offset(kv[1])):
        where = f"{path}: tensor {key!r}"
        tensor_key(key, f"{path}: tensor")
        expect(entry, dict, where)
        if set(entry) != {"dtype", "shape", "data_offsets"} or entry["dtype"] not in _DTYPES:
            raise ArchiveError(f"{where}: entry {sorted(entry)} / dtype {entry.get('dtype')!r} is not valid")
        dtype, shape = _DTYPES[entry["dtype"]], int_list(entry["shape"], f"{where}: shape")
        begin, end = int_list(entry["data_offsets"], f"{where}: data_offsets", limit=data_size, max_len=2)
        nbytes = dtype.itemsize
        for dim in shape:
            nbytes *= dim
        if begin != expected or end - begin != nbytes:
            raise ArchiveError(f"{where}: its bytes [{begin}, {end}) do not match shape {shape} x {dtype} at offset "
                               f"{expected}; the file is corrupt")
        expected = end
        entries.append((key, dtype, shape, nbytes))
    if expected != data_size:
        raise _unreadable(path, f"tensors cover {expected} of the {data_size} data bytes")
    return entries


def _offset(entry) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return offsets[0] if isinstance(offsets, list) and offsets and type(offsets[0]) is int else -1


def _read_tensor(f, digest, path: Path, key: str, dtype: torch.dtype, shape: list[int], nbytes: int):
    buf = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    done = 0
    while done < nbytes:
        got = f.readinto(view[done:done + _CHUNK])
        if not got:
            raise _unreadable(path, f"tensor {key!r} is cut off")
        done += got
    digest.update(view)
    return buf.view(dtype).reshape(shape)
