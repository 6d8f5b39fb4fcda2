"""ENVI rasters (a text ``.hdr`` beside a raw binary file), the format flight lines come in
(AVIRIS, HyMap, PRISMA exports), read as (lines, samples, bands) without GDAL, and class maps
written back as ENVI classification files that GIS tools overlay on the flight line.

The header names the shape (``samples``, ``lines``, ``bands``), ``data type``, ``interleave``
(``bsq``, ``bil`` or ``bip``), ``byte order`` and ``header offset``; the binary is mapped, not read
whole, and viewed in (lines, samples, bands) order. Either file may be named.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# ENVI's data type codes (the ones a hyperspectral raster or class map uses).
DTYPES = {1: np.uint8, 2: np.int16, 3: np.int32, 4: np.float32, 5: np.float64, 12: np.uint16, 13: np.uint32,
          14: np.int64, 15: np.uint64}
# Axis order of the binary for each interleave, and the transpose to (lines, samples, bands).
LAYOUTS = {"bsq": (("bands", "lines", "samples"), (1, 2, 0)), "bil": (("lines", "bands", "samples"), (0, 2, 1)),
           "bip": (("lines", "samples", "bands"), (0, 1, 2))}
BINARY_SUFFIXES = ("", ".img", ".dat", ".raw", ".bin", ".bsq", ".bil", ".bip")


class EnviError(ValueError):
    """An ENVI header or binary that cannot be read; the message names the file and the problem."""


def header_of(path: str | Path) -> Path | None:
    """The ``.hdr`` that describes ``path`` (the header itself, ``name.hdr`` or ``name.img.hdr``), if any."""
    path = Path(path)
    if path.suffix.lower() == ".hdr":
        return path
    for candidate in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if candidate.is_file():
            return candidate
    return None


def parse_header(text: str, name: str = "header") -> dict[str, str]:
    """``key = value`` pairs of an ENVI header, keys lower-case, ``{...}`` values joined across lines."""
    if not text.lstrip().startswith("ENVI"):
        raise EnviError(f"{name} is not an ENVI header (its first line is not 'ENVI')")
    fields = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.MULTILINE):
        fields[match.group(1).lower()] = match.group(2).strip()
    return fields


def _fields(header: Path) -> dict[str, str]:
    return parse_header(header.read_text(errors="replace"), str(header))


def read(path: str | Path) -> np.ndarray:
    """The raster ``path`` (header or binary) as a (lines, samples, bands) array view of the mapped
    binary; one band gives (lines, samples, 1)."""
    header = header_of(path)
    if header is None:
        raise EnviError(f"no ENVI header for {path}: expected {Path(path).with_suffix('.hdr')}")
    fields = _fields(header)
    shape = {key: _integer(fields, key, header) for key in ("samples", "lines", "bands")}
    code = _integer(fields, "data type", header)
    if code not in DTYPES:
        raise EnviError(f"{header}: data type {code} is not supported; supported codes: "
                        + ", ".join(f"{c} ({np.dtype(t).name})" for c, t in DTYPES.items()))
    interleave = fields.get("interleave", "bsq").lower()
    if interleave not in LAYOUTS:
        raise EnviError(f"{header}: interleave {interleave!r} is not one of bsq, bil, bip")
    byte_order = fields.get("byte order", "0")
    if byte_order not in ("0", "1"):
        raise EnviError(f"{header}: byte order {byte_order!r} is not 0 (little-endian) or 1 (big-endian)")
    dtype = np.dtype(DTYPES[code]).newbyteorder("<" if byte_order == "0" else ">")
    offset = _integer(fields, "header offset", header, default=0)
    binary = _binary_of(header, path)
    axes, to_lsb = LAYOUTS[interleave]
    stored = tuple(shape[axis] for axis in axes)
    expected = offset + int(np.prod(stored)) * dtype.itemsize
    if binary.stat().st_size < expected:
        raise EnviError(f"{binary} holds {binary.stat().st_size} bytes; its header ({header.name}: {shape['lines']} "
                        f"lines x {shape['samples']} samples x {shape['bands']} bands of {dtype.name}, offset {offset}) "
                        f"needs {expected}: the file is truncated or the header belongs to another file")
    data = np.memmap(binary, dtype=dtype, mode="r", offset=offset, shape=stored)
    return data.transpose(to_lsb)


def class_names(path: str | Path) -> tuple[str, ...] | None:
    """The names of classes 1..K in an ENVI classification's header (its ``class names`` list,
    whose first entry is class 0, unclassified); None without such a header or list."""
    header = header_of(path)
    if header is None:
        return None
    listed = _fields(header).get("class names", "")
    names = [name.strip() for name in listed.strip("{}").split(",") if name.strip()]
    return tuple(names[1:]) or None


def _integer(fields: dict[str, str], key: str, header: Path, default: int | None = None) -> int:
    if key not in fields:
        if default is not None:
            return default
        raise EnviError(f"{header} has no '{key}' field; an ENVI header needs samples, lines, bands and data type")
    try:
        return int(fields[key])
    except ValueError:
        raise EnviError(f"{header}: '{key} = {fields[key]}' is not an integer") from None


def _binary_of(header: Path, named: str | Path) -> Path:
    """The binary the header describes: the file named, if it is not the header, else the header's
    stem with one of the usual suffixes."""
    named = Path(named)
    if named.suffix.lower() != ".hdr":
        return named
    stem = header.with_suffix("")
    for suffix in BINARY_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    raise EnviError(f"no binary beside {header}: expected {stem.name} with one of the suffixes "
                    + ", ".join(repr(s) for s in BINARY_SUFFIXES))


# Where a raster sits on the ground: copied from a flight line's header to the map made of it.
GEOREFERENCE_FIELDS = ("map info", "coordinate system string", "projection info", "pixel size")


def write_classification(binary: Path, class_map: np.ndarray, class_names, colors: np.ndarray,
                         source: Path | None = None) -> None:
    """``class_map`` (lines, samples; 0 = unclassified, 1..K) as an ENVI classification file:
    ``binary`` and ``binary.hdr`` with the class names and colours, and the georeferencing of the
    ENVI raster ``source`` (header or binary) when there is one, so the map lies on its flight line."""
    classes = len(class_names) + 1
    dtype = np.uint8 if classes <= 256 else np.uint16
    binary.write_bytes(np.ascontiguousarray(class_map, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
    names = ", ".join(name.replace(",", ";") for name in ("Unclassified", *class_names))
    lookup = ", ".join(str(int(v)) for v in np.asarray(colors[:classes]).reshape(-1))
    lines = ["ENVI", "description = {HybridSN class map (lightnets_jax)}", f"samples = {class_map.shape[1]}",
             f"lines = {class_map.shape[0]}", "bands = 1", "header offset = 0", "file type = ENVI Classification",
             f"data type = {1 if dtype == np.uint8 else 12}", "interleave = bsq", "byte order = 0",
             f"classes = {classes}", f"class names = {{{names}}}", f"class lookup = {{{lookup}}}"]
    header = header_of(source) if source is not None else None
    if header is not None:
        fields = _fields(header)
        lines += [f"{key} = {fields[key]}" for key in GEOREFERENCE_FIELDS if key in fields]
    Path(str(binary) + ".hdr").write_text("\n".join(lines) + "\n")
