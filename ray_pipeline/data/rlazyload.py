"""Read objects from an R lazy-load database (``Rdata.rdx`` index + ``Rdata.rdb`` blocks).

The index is an RDS file mapping each object to (offset, length) in the ``.rdb``; each block
is a 4-byte big-endian uncompressed length followed by the serialized object, compressed as
the index's ``compressed`` field says: 1 = zlib; 2 and 3 = a type byte first
('0' none, '1' zlib, '2' bzip2, 'Z' raw LZMA2 as R writes it). The ``rdata`` package
parses the serialized objects.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

_R_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]  # R's init_filters()


def _decompress(block: bytes, compressed: int) -> bytes:
    (size,) = struct.unpack(">I", block[:4])
    if compressed == 1:
        data = zlib.decompress(block[4:])
    else:
        kind, payload = block[4:5], block[5:]
        if kind == b"0":
            data = payload
        elif kind == b"1":
            data = zlib.decompress(payload)
        elif kind == b"2":
            data = bz2.decompress(payload)
        elif kind == b"Z":
            data = lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=_R_LZMA_FILTERS)
        else:
            raise ValueError(f"unknown R compression type {kind!r}")
    if len(data) != size:
        raise ValueError(f"block decompressed to {len(data)} bytes, expected {size}")
    return data


def read_objects(rdx: Path, rdb: Path, names: list[str]) -> dict[str, Any]:
    """The named objects of the database, converted by ``rdata`` (data frames -> pandas)."""
    import rdata

    # rdata warns about the .rdx extension and tibble classes it reads as data frames.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(rdata.parser.parse_file(rdx))
        variables = {str(k): v for k, v in index["variables"].items()}
        compressed = int(index["compressed"][0])
        blob = rdb.read_bytes()
        out = {}
        for name in names:
            if name not in variables:
                raise KeyError(f"{name} not in {rdx} (has {', '.join(sorted(variables))})")
            offset, length = (int(x) for x in variables[name])
            raw = _decompress(blob[offset : offset + length], compressed)
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out
