"""Reading safetensors files one tensor at a time, straight into the buffer the model keeps.

The safetensors library reads through a memory map; every page it touches counts toward the process's resident
memory until the file is closed, so converting a 24 GB checkpoint to another dtype would hold it twice. Reading
each tensor with ``readinto`` keeps the peak at the loaded weights plus one tensor. The header is validated
against the file size first, so a truncated or corrupt download is reported before any weight is read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .atomic_files import write_file

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# dtypes the safetensors format defines that these loaders do not read (no EasyAnimate weight uses them).
_UNSUPPORTED_DTYPES = ("U16", "U32", "U64", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")
_MAX_HEADER = 100 * 1024 * 1024


class CorruptWeightsError(ValueError):
    """A weight file that cannot be read as safetensors (truncated, corrupt, or another format)."""


class UnsupportedDtypeError(ValueError):
    """A valid safetensors file holding a tensor in a dtype the loaders do not read."""


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    nbytes: int


def _corrupt(path: Path, why: str) -> CorruptWeightsError:
    return CorruptWeightsError(
        f"{path} is not a readable safetensors file ({why}). It is probably truncated or corrupt: "
        f"download it again and compare its size with the one on the model page."
    )


def read_header(path: Path) -> list[TensorEntry]:
    """Every tensor of one file, checked against the file size, without reading tensor data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"only {size} bytes")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise _corrupt(path, f"header length {header_len} does not fit in a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(path, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    data_start = 8 + header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if isinstance(info, dict) and info.get("dtype") in _UNSUPPORTED_DTYPES:
            raise UnsupportedDtypeError(
                f"{path}: tensor '{name}' is stored as {info['dtype']}, a valid safetensors dtype that this loader "
                f"does not read (it reads {', '.join(_DTYPES)}). The file is not corrupt: convert its tensors to "
                f"BF16, F16 or F32 (e.g. load it with safetensors and save it again after .to(torch.bfloat16)), "
                f"or download the model's published weights.")
        if isinstance(info, dict) and isinstance(info.get("dtype"), str) and info["dtype"] not in _DTYPES:
            raise _corrupt(path, f"tensor '{name}' has the dtype {info['dtype']!r}, which safetensors does not define")
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"bad header entry for tensor '{name}'") from exc
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise _corrupt(path, f"tensor '{name}' has offsets {begin}..{end} for {nbytes} bytes")
        if data_start + end > size:
            raise _corrupt(path, f"tensor '{name}' ends at byte {data_start + end} but the file has {size} bytes")
        entries.append(TensorEntry(path, name, dtype, shape, data_start + begin, nbytes))
    return entries


def read_tensors(
    entries: list[TensorEntry], *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
    """Yield (entry, tensor) in file order; floating tensors are cast to ``dtype`` (when given).

    A tensor that is kept as stored is read straight into its own memory. One that is cast or moved to another
    device is read into a single staging buffer reused for every such tensor: a fresh read buffer per tensor
    fragments the heap and raised the peak of a cast load to 1.2x the weights (bench/README.md, finding 1).
    """
    device = torch.device(device)

    def converted(entry: TensorEntry) -> bool:
        cast = dtype is not None and entry.dtype.is_floating_point and entry.dtype != dtype
        return cast or device.type != "cpu"

    staging_size = max((e.nbytes for e in entries if converted(e)), default=0)
    staging = torch.empty(staging_size, dtype=torch.uint8) if staging_size else None
    handles: dict[Path, object] = {}
    try:
        for entry in sorted(entries, key=lambda e: (str(e.file), e.begin)):
            f = handles.get(entry.file)
            if f is None:
                f = handles[entry.file] = open(entry.file, "rb")
            raw = staging[: entry.nbytes] if converted(entry) else torch.empty(entry.nbytes, dtype=torch.uint8)
            f.seek(entry.begin)
            if entry.nbytes and f.readinto(memoryview(raw.numpy())) != entry.nbytes:
                raise _corrupt(entry.file, f"tensor '{entry.name}' is cut short")
            tensor = raw.view(entry.dtype).reshape(entry.shape)
            if converted(entry):
                target = dtype if dtype is not None and entry.dtype.is_floating_point else entry.dtype
                tensor = tensor.to(device=device, dtype=target, copy=True)
            yield entry, tensor
    finally:
        for f in handles.values():
            f.close()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                      ) -> Path:
    """``tensors`` to a safetensors file, written whole or not at all (``atomic_files``): its header must read back
    against the file size, with every tensor name, before the file takes its name."""
    from safetensors.torch import save_file

    def check(tmp: Path) -> None:
        try:
            names = {entry.name for entry in read_header(tmp)}
        except CorruptWeightsError as exc:
            raise OSError("the written file reads back as a truncated or corrupt safetensors file") from exc
        if names != set(tensors):
            raise OSError(f"the written file reads back with {len(names)} tensors, not {len(tensors)}")

    def write(tmp: Path) -> None:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp), metadata=metadata)

    return write_file(path, write, check)
