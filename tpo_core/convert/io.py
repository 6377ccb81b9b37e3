"""Lazy reading of a sharded safetensors release and incremental writing of safetensors files.

``ReleaseFolder`` reads only the index until asked for more: ``shapes()`` reads each shard's JSON header
(a few hundred kB), ``iter_shard(shard)`` opens one shard with ``safe_open`` and yields one tensor at a time.
``SafetensorsWriter`` writes a safetensors file whose header is known up front (names, dtypes, shapes): each
tensor goes to its offset as soon as it exists, so a conversion never holds the whole state dict. The files it
writes are ordinary safetensors files (``safetensors.torch.load_file`` reads them).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


class ReleaseFolderError(ValueError):
    pass


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (name -> {dtype, shape, data_offsets}, plus ``__metadata__``)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ReleaseFolderError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise ReleaseFolderError(f"{path} is not a safetensors file (header of {size} bytes)")
        return json.loads(f.read(size))


class ReleaseFolder:
    """A sharded release folder: ``model.safetensors.index.json`` + the shards it names + config + tokenizer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / INDEX
        if not index.is_file():
            raise ReleaseFolderError(f"{self.path} has no {INDEX}; pass the folder of the VideoChat-TPO release "
                                     "(the one with the index, its 4 model-0000N-of-00004.safetensors shards, "
                                     "config.json and tokenizer.model)")
        data = json.loads(index.read_text())
        if not isinstance(data.get("weight_map"), dict) or not data["weight_map"]:
            raise ReleaseFolderError(f"{index} has no weight_map; it is not a sharded safetensors index")
        self.weight_map: dict[str, str] = data["weight_map"]
        self.total_size = int(data.get("metadata", {}).get("total_size", 0))

    @property
    def names(self) -> list[str]:
        return list(self.weight_map)

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def config(self) -> dict:
        path = self.path / "config.json"
        if not path.is_file():
            raise ReleaseFolderError(f"{self.path} has no config.json; copy the release's config.json beside "
                                     "its index")
        return json.loads(path.read_text())

    def check_shards(self) -> None:
        missing = [s for s in self.shards if not (self.path / s).is_file()]
        if missing:
            raise ReleaseFolderError(f"{self.path} lacks the shards {missing} named by {INDEX}; download every "
                                     "shard of the release into this folder")

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) from the shard headers (no tensor data is read); checks the index agrees."""
        self.check_shards()
        out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for shard in self.shards:
            header = read_header(self.path / shard)
            for name, info in header.items():
                if name != "__metadata__":
                    out[name] = (tuple(info["shape"]), ST_DTYPES[info["dtype"]])
        for name, shard in self.weight_map.items():
            if name not in out:
                raise ReleaseFolderError(f"{INDEX} puts {name} in {shard}, but no shard holds it; the folder "
                                         "mixes files of different releases")
        extra = sorted(set(out) - set(self.weight_map))
        if extra:
            raise ReleaseFolderError(f"the shards hold tensors the index does not list: {extra[:5]}")
        return out

    def iter_shard(self, shard: str) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) of one shard, one tensor in memory at a time (``safe_open``)."""
        from safetensors import safe_open

        with safe_open(str(self.path / shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor; ``entries`` (name -> (shape, dtype)) fixes the layout.

    Usage: ``w = SafetensorsWriter(path, entries, metadata)``, then ``w.write(name, tensor)`` for every entry
    (any order), then ``w.close()`` (raises if an entry was never written).
    """

    def __init__(self, path: str | Path, entries: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.entries = dict(entries)
        header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
        offset = 0
        self.offsets: dict[str, int] = {}
        for name in sorted(self.entries):
            shape, dtype = self.entries[name]
            nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.offsets[name] = offset
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.nbytes = offset
        self.written: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._file.truncate(self.data_start + offset)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shape, dtype = self.entries[name]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise AssertionError(f"{self.path.name}: {name} is {tuple(tensor.shape)} {tensor.dtype}, the header "
                                 f"says {tuple(shape)} {dtype}")
        if name in self.written:
            raise AssertionError(f"{self.path.name}: {name} written twice")
        flat = tensor.detach().contiguous().cpu().reshape(-1)
        self._file.seek(self.data_start + self.offsets[name])
        if flat.numel():
            self._file.write(memoryview(flat.view(torch.uint8).numpy()))
        self.written.add(name)

    def close(self) -> None:
        self._file.close()
        left = sorted(set(self.entries) - self.written)
        if left:
            raise AssertionError(f"{self.path.name}: {len(left)} tensors never written: {left[:5]}")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
