"""Feature (embedding) files: ``.npy``, ``.npz`` and ``.safetensors`` holding an (N, D) matrix, and the
checks every feature matrix passes before the metrics engine sees it."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from cryoet_forge.errors import InputError
from cryoet_forge.io.atomic import atomic_path
from cryoet_forge.io.files import check_input_file

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors")
FEATURE_KEY = "features"


_FINITE_CHECK_ROWS = 4096


def as_feature_matrix(x: Any, name: str = "features") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 (N, D) array, or raise InputError saying why."""
    try:
        array = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{name}: cannot be read as an array ({exc})") from None
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (N, D), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name} must be non-empty, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{name} must be real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize > 4:
        # finite values beyond float32's range would turn into Inf below and be called "non-finite"
        _check_float32_range(array, name, 0)
    return np.ascontiguousarray(array, dtype=np.float32)


def check_finite(x: np.ndarray, name: str = "features") -> None:
    """Raise InputError naming the first row with a NaN or Inf (checked in row chunks)."""
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        chunk = x[start : start + _FINITE_CHECK_ROWS]
        ok = np.isfinite(chunk).all(axis=1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            col = int(np.argmin(np.isfinite(x[row])))
            raise InputError(
                f"{name} has a non-finite value (NaN or Inf) at row {row}, column {col}; "
                "remove or fix such rows"
            )


def _as_matrix(array: Any, path: Path) -> np.ndarray:
    return as_feature_matrix(array, name=f"{path}: features")


#: how each feature format begins (NumPy's format magic; a zip archive)
_MAGIC = {".npy": (b"\x93NUMPY", "a NumPy .npy header"), ".npz": (b"PK", "a zip (.npz) archive")}

#: a float32 copy up to this size is made in memory; a larger one goes to a scratch file (TMPDIR)
IN_MEMORY_COPY_BYTES = 256 << 20
#: rows converted at a time (about this many bytes of float32 per block)
_BLOCK_BYTES = 32 << 20

#: safetensors dtype names -> NumPy dtypes (little-endian by the format); BF16 is converted by hand
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BF16": "<u2"}


def _check_magic(p: Path, suffix: str) -> None:
    """InputError when a .npy/.npz file does not start as that format does (NumPy would call a
    text file "pickled data", which it is not)."""
    if suffix not in _MAGIC:
        return
    magic, what = _MAGIC[suffix]
    with open(p, "rb") as fh:
        head = fh.read(len(magic))
    if head != magic:
        if not head:
            raise InputError(f"{p}: the file is empty; expected {what}")
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
        if head.startswith(b"\x80"):
            kind = "a Python pickle (never loaded)"
        raise InputError(f"{p}: not a {suffix} file (starts with {kind}, not {what})")


def _npy_array_at(p: Path, offset: int) -> np.ndarray:
    """The array of the .npy stream starting at byte ``offset`` of ``p``, memory-mapped."""
    with open(p, "rb") as fh:
        fh.seek(offset)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version} is not supported")
        data_offset = fh.tell()
    if dtype.hasobject:
        raise InputError(f"{p}: features must be real numbers, got dtype {dtype} (Python objects)")
    if not shape or any(n == 0 for n in shape):  # nothing to map; the shape check says what is wrong
        return np.empty(shape, dtype=dtype)
    return np.memmap(p, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran else "C")


def _zip_member_offset(p: Path, info: Any) -> int:
    """Byte offset of a stored zip member's data: after its local header, name and extra field."""
    with open(p, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"no local zip header for {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return int(info.header_offset) + 30 + name_len + extra_len


def _npz_array(p: Path) -> np.ndarray:
    """The ``features`` member of an .npz (else its first array): a stored (uncompressed)
    member is memory-mapped in place, a compressed one is read whole."""
    with zipfile.ZipFile(p) as archive:
        members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
        if not members:
            raise InputError(f"{p}: the .npz archive holds no arrays")
        names = [i.filename[: -len(".npy")] for i in members]
        info = members[names.index(FEATURE_KEY) if FEATURE_KEY in names else 0]
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            return _npy_array_at(p, _zip_member_offset(p, info))
        with archive.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)


def _safetensors_array(p: Path) -> np.ndarray | _BFloat16:
    """The ``features`` tensor of a .safetensors file (else its only tensor), memory-mapped.

    The format: 8 bytes little-endian header length, a JSON header naming each tensor's dtype,
    shape and byte range in the data that follows. The file is first opened with the
    safetensors library, which validates the header."""
    with safe_open(str(p), framework="numpy") as handle:
        keys = sorted(handle.keys())
    if FEATURE_KEY in keys:
        key = FEATURE_KEY
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise InputError(f"{p}: no tensor named {FEATURE_KEY!r} among {keys}; save the matrix under that key")
    with open(p, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(length))
    entry = header[key]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise InputError(f"{p}: features must be real numbers, got safetensors dtype {entry['dtype']}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
    shape = tuple(int(n) for n in entry["shape"])
    begin, end = (int(v) for v in entry["data_offsets"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise ValueError(f"tensor {key!r}: byte range {begin}..{end} does not hold shape {shape} of {entry['dtype']}")
    if any(n == 0 for n in shape):
        array = np.empty(shape, dtype=dtype)
    else:
        array = np.memmap(p, dtype=dtype, mode="r", offset=8 + length + begin, shape=shape)
    if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
        return _BFloat16(array)
    return array


class _BFloat16:
    """A (N, D) uint16 array of bfloat16 bit patterns, converted to float32 by row blocks."""

    def __init__(self, bits: np.ndarray):
        self.bits = bits
        self.shape = bits.shape
        self.ndim = bits.ndim
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return (self.bits[rows].astype(np.uint32) << 16).view(np.float32)


def _check_float32_range(block: np.ndarray, name: str, first_row: int) -> None:
    """InputError for a finite value beyond float32's range (it would become Inf)."""
    limit = float(np.finfo(np.float32).max)
    big = np.isfinite(block) & (np.abs(block) > limit)
    if big.any():
        row, col = (int(i) for i in np.argwhere(big)[0])
        raise InputError(f"{name}: value {float(block[row, col]):.3g} at row {first_row + row}, column {col} is "
                         f"beyond the float32 range (|x| <= {limit:.3g}); rescale the features")


def _float32_rows(array: Any, name: str) -> np.ndarray:
    """``array`` (N, D) as C-contiguous float32: itself when it already is (a memory map stays
    one), else converted by row blocks into memory or, when large, into a scratch file in the
    temporary folder (deleted when the result is), so no whole-size temporary is ever made."""
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (N, D), got shape {array.shape}")
    n, d = (int(v) for v in array.shape)
    if n == 0 or d == 0:
        raise InputError(f"{name} must be non-empty, got shape {array.shape}")
    dtype = array.dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{name} must be real numbers, got dtype {dtype}")
    if (isinstance(array, np.ndarray) and dtype == np.float32 and dtype.isnative and array.flags.c_contiguous
            and array.flags.aligned):  # np.savez's members are not 4-byte aligned: those are copied
        return array
    if n * d * 4 <= IN_MEMORY_COPY_BYTES:
        out = np.empty((n, d), dtype=np.float32)
    else:
        scratch = tempfile.TemporaryFile(prefix="forge-features-")  # unlinked at once; freed with the map
        scratch.truncate(n * d * 4)
        out = np.memmap(scratch, dtype=np.float32, mode="r+", shape=(n, d))
        scratch.close()
    step = max(1, _BLOCK_BYTES // (4 * d))
    wide = np.issubdtype(dtype, np.floating) and dtype.itemsize > 4
    for start in range(0, n, step):
        block = array[start : start + step]
        if wide:
            _check_float32_range(block, name, start)
        out[start : start + step] = block
    return out


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Read an (N, D) feature matrix as C-contiguous float32, out of core where it can be.

    ``.npy``: the array; ``.npz``: key ``features`` or else the first array;
    ``.safetensors``: key ``features`` or else the only tensor. A little-endian float32 matrix
    in C order in an ``.npy``, an uncompressed ``.npz`` (what ``np.savez`` and
    ``save_features`` write) or a ``.safetensors`` file is memory-mapped, not read: the
    metrics read it in blocks and the operating system pages it in and out. Any other number
    type (float16, bfloat16, float64, integers), byte order or Fortran order is converted to
    float32 block by block, in memory up to ``IN_MEMORY_COPY_BYTES`` and in a scratch file in
    the temporary folder (``TMPDIR``) above that. A compressed ``.npz`` member is read whole.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise InputError(
            f"{p}: unsupported feature file type {p.suffix or '(none)'!r}; expected one of {', '.join(FEATURE_SUFFIXES)}"
        )
    check_input_file(p, "feature file")
    _check_magic(p, suffix)
    name = f"{p}: features"
    try:
        if suffix == ".npy":
            array: Any = _npy_array_at(p, 0)
        elif suffix == ".npz":
            array = _npz_array(p)
        else:
            array = _safetensors_array(p)
        return _float32_rows(array, name)
    except InputError:
        raise
    except Exception as exc:  # corrupt or foreign files (ValueError, OSError, BadZipFile, ...)
        raise InputError(f"{p}: cannot read features ({type(exc).__name__}: {exc})") from None


def save_features(path: str | os.PathLike, array: Any) -> Path:
    """Write an (N, D) matrix as float32 to ``.npy``, ``.npz`` or ``.safetensors`` (atomically)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise InputError(f"{p}: unsupported feature file type {p.suffix or '(none)'!r}; expected one of {', '.join(FEATURE_SUFFIXES)}")
    matrix = _as_matrix(array, p)
    with atomic_path(p) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, matrix, allow_pickle=False)
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **{FEATURE_KEY: matrix})  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        else:
            save_file({FEATURE_KEY: matrix}, str(tmp))
    return p
