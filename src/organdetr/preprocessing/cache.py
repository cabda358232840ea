"""The preprocessed cache as a contract: what a case on disk is, and how it is checked before it is trusted.

Layout (docs/conventions.md, "Preprocessed cache"): ``plans.json`` (:mod:`organdetr.preprocessing.plans`)
and ``cases/<id>.json`` + ``cases/<id>_image.npy`` (+ ``_label.npy``). :func:`write_case` writes the arrays
first and the case JSON last (atomically); the JSON records every array's shape, dtype, byte size and
SHA-256. The cache is verified, not trusted because a file exists: :func:`verify_case` checks those records
(a mismatch makes ``preprocess`` redo the case and ``train`` name the file), :func:`verify_cases` checks a
whole training set, :func:`load_case` memory-maps a case after cheap header checks, :func:`list_cases` and
:func:`is_complete` say what the cache holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from organdetr.preprocessing.plans import num_channels
from organdetr.runtime.atomic import file_sha256, visible_files, write_json, write_npy
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief, collapse


def _case_paths(cache_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    cases = cache_dir / "cases"
    return cases / f"{case_id}.json", cases / f"{case_id}_image.npy", cases / f"{case_id}_label.npy"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` file from its header alone; InputError if unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            return tuple(int(s) for s in shape), dtype, fh.tell()
    except FileNotFoundError:
        raise InputError(path, "array file is missing") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable .npy array ({collapse(str(err), 200)})") from None


def _array_entry(path: Path) -> dict:
    """What the case JSON records of an array file: shape, dtype, byte size, SHA-256."""
    shape, dtype, _ = _npy_header(path)
    return {
        "shape": list(shape),
        "dtype": dtype.str,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def write_case(
    cache_dir: str | Path, case_id: str, image: np.ndarray, label: np.ndarray | None, record: dict
) -> dict:
    """Write one case into ``cache_dir/cases``: the arrays first, then the case JSON (last, atomically).

    ``record`` is the case record without its file fields; the JSON gets ``case_id``, ``image_file``,
    ``label_file`` and ``arrays`` (per file: shape, dtype, bytes, sha256). Returns the JSON written.
    """
    record_path, image_file, label_file = _case_paths(Path(cache_dir), case_id)
    write_npy(image_file, image)
    arrays = {image_file.name: _array_entry(image_file)}
    if label is not None:
        write_npy(label_file, label)
        arrays[label_file.name] = _array_entry(label_file)
    record = {key: value for key, value in record.items() if key not in ("arrays", "case_id")}
    record = {"case_id": case_id, **record, "image_file": image_file.name}
    record["label_file"] = label_file.name if label is not None else None
    record["arrays"] = arrays
    write_json(record_path, record)
    return record


def _read_record(record_path: Path, case_id: str) -> dict:
    if not record_path.exists():
        raise InputError(record_path, f"case {brief(case_id)} is not in the cache")
    record = read_json(record_path, "unreadable case record")
    if not isinstance(record, dict) or not isinstance(record.get("image_file"), str):
        raise InputError(record_path, "not a case record (needs 'image_file')")
    return record


def _verify_array(path: Path, entry: dict | None, expected_shape, checksum: bool) -> None:
    """One array file against its record entry (or, for records without one, against its own header)."""
    shape, dtype, offset = _npy_header(path)
    size = path.stat().st_size
    if entry is None:  # a record written without checksums: the header must at least fit the file
        needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != needed:
            raise InputError(path, f"array file has {size} bytes, its header needs {needed} (truncated?)")
    else:
        if size != entry.get("bytes"):
            raise InputError(path, f"array file has {size} bytes, the case record says {entry.get('bytes')}")
        if list(shape) != entry.get("shape") or dtype.str != entry.get("dtype"):
            raise InputError(
                path,
                f"array is {dtype.str} {list(shape)}, the case record says {entry.get('dtype')} "
                f"{entry.get('shape')}",
            )
        if checksum and file_sha256(path) != entry.get("sha256"):
            raise InputError(path, "array content does not match the SHA-256 in its case record (corrupt)")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise InputError(
            path, f"array shape {list(shape)} differs from plans.json input_size {list(expected_shape)}"
        )


def verify_case(
    cache_dir: str | Path,
    case_id: str,
    *,
    plans: dict | None = None,
    checksum: bool = True,
    finite: bool = False,
    require_checksums: bool = False,
) -> dict:
    """Check a cached case and return its record; :class:`InputError` names the first bad file.

    Checks: the case JSON is readable; each array it names exists with the recorded byte size, shape and
    dtype (header only) and, with ``checksum``, the recorded SHA-256; with ``plans``, the grid is the
    plans' ``input_size``; with ``finite``, the image holds no NaN/inf. Records written before checksums
    existed pass on the header checks unless ``require_checksums``.
    """
    cache_dir = Path(cache_dir)
    record_path, _, _ = _case_paths(cache_dir, case_id)
    record = _read_record(record_path, case_id)
    arrays = record.get("arrays")
    if require_checksums and not isinstance(arrays, dict):
        raise InputError(record_path, "case record has no array checksums (written by an older organdetr)")
    expected = None if plans is None else tuple(int(s) for s in plans["input_size"])
    if expected is not None and tuple(record.get("grid", {}).get("size", ())) != expected:
        raise InputError(
            record_path,
            f"case grid {record.get('grid', {}).get('size')} differs from plans.json "
            f"input_size {list(expected)}",
        )
    for name in (record.get("image_file"), record.get("label_file")):
        if not name:
            continue
        entry = arrays.get(name) if isinstance(arrays, dict) else None
        if isinstance(arrays, dict) and entry is None:
            raise InputError(record_path, f"case record has no checksum entry for {name}")
        shape = expected
        if expected is not None and name == record.get("image_file") and plans.get("channel_norm"):
            shape = (num_channels(plans), *expected)  # a multi-channel image is [C, I, J, K]
        _verify_array(record_path.parent / name, entry, shape, checksum)
    if finite:
        image_path = record_path.parent / record["image_file"]
        image = np.load(image_path, mmap_mode="r", allow_pickle=False)
        check_finite_array(image_path, image)
    return record


def verify_cases(
    cache_dir: str | Path, case_ids: list[str], plans: dict, *, progress: bool = False
) -> list[dict]:
    """:func:`verify_case` (checksums, shapes against ``plans``, NaN/inf) for every case; returns the records.

    Raises :class:`InputError` naming the first bad file (``train`` runs this before its first step).
    """
    records = []
    with tqdm(case_ids, desc="verify cache", unit="case", disable=not progress, leave=False) as bar:
        for case_id in bar:  # the context closes (clears) the bar before an error is printed
            records.append(verify_case(cache_dir, case_id, plans=plans, checksum=True, finite=True))
    return records


def check_finite_array(path: str | Path, array: np.ndarray) -> None:
    """InputError naming ``path`` when a float ``array`` holds NaN or inf (scanned in slabs of 16 planes)."""
    if array.dtype.kind != "f":
        return
    bad = 0
    for start in range(0, max(1, array.shape[0]), 16):
        bad += int(np.count_nonzero(~np.isfinite(array[start : start + 16])))
    if bad:
        raise InputError(path, f"cached array holds {bad} NaN/inf values (corrupt cache; rerun preprocess)")


def is_complete(cache_dir: str | Path, case_id: str, plans: dict | None = None) -> bool:
    """A case is complete when its JSON exists and every array it names matches its record (checksums too)."""
    try:
        verify_case(cache_dir, case_id, plans=plans, require_checksums=True)
    except InputError:
        return False
    return True


def list_cases(cache_dir: str | Path) -> list[str]:
    """Ids of the cases the cache holds a record for (``cases/<id>.json``), sorted.

    A record whose arrays are broken is listed (and named by :func:`verify_case` / :func:`load_case`),
    never silently dropped; a case whose JSON was never written (an interrupted run) is not.
    """
    cases = Path(cache_dir) / "cases"
    if not cases.is_dir():
        return []
    return [p.stem for p in visible_files(cases, "*.json")]


def load_case(
    cache_dir: str | Path, case_id: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(image [I, J, K], label [I, J, K] | None, record)`` of a cached case.

    Arrays are memory-mapped read-only when ``mmap``. InputError naming the file if the case is missing,
    an array is missing or truncated, or its shape/dtype differ from the record (cheap header checks;
    :func:`verify_case` also checks the content).
    """
    record_path, _, _ = _case_paths(Path(cache_dir), case_id)
    record = _read_record(record_path, case_id)
    arrays = record.get("arrays") if isinstance(record.get("arrays"), dict) else {}
    mode = "r" if mmap else None
    loaded = []
    for name in (record["image_file"], record.get("label_file")):
        if not name:
            loaded.append(None)
            continue
        path = record_path.parent / name
        try:
            array = np.load(path, mmap_mode=mode, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(path, f"array of case {brief(case_id)} is missing") from None
        except (OSError, ValueError, EOFError) as err:
            raise InputError(
                path, f"unreadable or truncated array ({collapse(str(err), 200)})"
            ) from None
        entry = arrays.get(name)
        if entry is not None and (
            list(array.shape) != entry.get("shape") or array.dtype.str != entry.get("dtype")
        ):
            raise InputError(
                path,
                f"array is {array.dtype.str} {list(array.shape)}, the case record says "
                f"{entry.get('dtype')} {entry.get('shape')}",
            )
        loaded.append(array)
    return loaded[0], loaded[1], record


__all__ = [
    "check_finite_array",
    "is_complete",
    "list_cases",
    "load_case",
    "verify_case",
    "verify_cases",
    "write_case",
]
