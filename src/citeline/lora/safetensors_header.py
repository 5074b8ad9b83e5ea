"""A safetensors file's tensor shapes from its header, validated as the ``safetensors`` library validates it.

Reads the 8-byte little-endian header length and the JSON header only: no torch, no tensor data in memory.
A file the library would refuse (``safe_open``: a truncated or padded file, offsets that leave gaps or
overlap, a shape that does not match its bytes, an unknown dtype, non-string metadata) raises
``ValueError`` here too, so a check built on this cannot pass an adapter that fails to load.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, BinaryIO

__all__ = ["MAX_HEADER_BYTES", "safetensors_shapes"]

MAX_HEADER_BYTES = 100_000_000  # the library's own limit
# bits per element of every dtype the library knows
_DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
               "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
               "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


def safetensors_shapes(f: BinaryIO) -> dict[str, list[int]]:
    """Tensor name → shape of the open safetensors file ``f``; ``ValueError`` naming what is wrong."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise ValueError(f"the file is {size} bytes, too small for a safetensors header")
    length = int.from_bytes(f.read(8), "little")
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"its header claims {length} bytes, over the limit of {MAX_HEADER_BYTES}")
    if 8 + length > size:
        raise ValueError(f"the file is {size} bytes, its header alone claims {8 + length}")
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("its __metadata__ is not an object of strings")
    end = _check_layout(header)
    if 8 + length + end != size:
        raise ValueError(f"the file is {size} bytes, its header describes {8 + length + end}")
    return {name: list(info["shape"]) for name, info in header.items()}


def _check_layout(header: dict[str, Any]) -> int:
    """The end of the data; ``ValueError`` unless the tensors tile the data without gaps and match their shapes."""
    start = 0
    for name, info in sorted(header.items(), key=lambda item: _offsets(*item)):
        begin, end = _offsets(name, info)
        if begin != start or end < begin:
            raise ValueError(f"tensor {name!r} has invalid data offsets [{begin}, {end}]")
        shape, bits = info.get("shape"), _DTYPE_BITS.get(info.get("dtype"))
        if bits is None:
            raise ValueError(f"tensor {name!r} has an unknown dtype {info.get('dtype')!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise ValueError(f"tensor {name!r} has an invalid shape {shape!r}")
        if math.prod(shape) * bits != (end - begin) * 8:
            raise ValueError(f"tensor {name!r} of shape {shape} and dtype {info['dtype']} does not fill its "
                             f"{end - begin} bytes")
        start = end
    return start


def _offsets(name: str, info: Any) -> tuple[int, int]:
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
        raise ValueError(f"tensor {name!r} has no valid data_offsets")
    return offsets[0], offsets[1]
