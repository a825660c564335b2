"""Stage 2: image lists -> Caffe Datum databases (LMDB or LevelDB) and mean .binaryproto files.

What Caffe's `convert_imageset` and `compute_image_mean` do, with the same records, in parallel and resumable:

    convert_list(files_txt, image_root, db_path, ...) -> DbInfo    one list -> one database (+ its mean)
    convert_data_root(data_root, image_root, val_root=None, ...)    every split of a data root
    write_arrays(db_path, records, ...) -> DbInfo                   in-memory images (embedded datasets)
    make_view(view_dir, shared_db, files_txt, shared_files_txt)     a split as a key list over a shared database
    open_reader(path)                                               (key, value) in key order; LMDB, LevelDB,
                                                                    or a key-list view over a shared database
    decode_datum(value) -> (uint8 C x H x W BGR array, label)
    compute_mean(path) -> float32 C x H x W;  is_complete(path) -> bool

This module is the stage's public surface; the parts live in: records (keys, Datum values, list order), stores
(a backend per kind of database, reading and writing), convert (converting and means), lists (the list reader).
A database under construction lives in `<db>.partial/`; it is renamed to `<db>` and gets the completion marker
`convnet_transfer.complete.json` (count and md5 of the key list) only once verified. See docs/databases.md.
"""
from __future__ import annotations

import os
from pathlib import Path

from convnet_transfer.formats import protoio
from . import layout
from .convert import (COMMIT_EVERY, PROGRESS, SLOW_ENV, DbInfo, compute_mean, convert_list, info_from_marker,
                      write_arrays)
from .errors import BadImageError, DatabaseError
from .lists import file_md5, read_list
from .records import datum_bytes, decode_datum, keys_md5, make_key, ordered
from .stores import BACKENDS, MARKER, is_complete, open_reader, read_marker, write_view

__all__ = [
    "DatabaseError", "BadImageError", "DbInfo", "make_key", "ordered", "convert_list", "convert_data_root",
    "write_arrays", "make_view", "open_reader", "decode_datum", "datum_bytes", "compute_mean", "is_complete",
    "read_list", "BACKENDS", "COMMIT_EVERY", "MARKER", "PROGRESS", "SLOW_ENV",
]

# ---------------------------------------------------------------- key-list views over one shared database

def make_view(view_dir, shared_db, files_txt, shared_files_txt, *, shuffle_seed=None) -> DbInfo:
    """A split as a key list over the database of a bigger list that contains all its images (e.g. whole_train).

    `view_dir` gets the view (stores.write_view) of one record per image: the key a database of this split alone
    would have, its key in shared_db, and the split's own label; images skipped in the shared database are
    listed in `<view_dir>.skipped.txt`. open_reader(view_dir) then yields exactly the records that
    convert_list(files_txt, ...) with the same options would have written.
    """
    view_dir, shared_db = Path(view_dir), Path(shared_db)
    marker = read_marker(shared_db)
    if marker is None:
        raise DatabaseError(f"{shared_db}: not a finished database; convert {shared_files_txt} first")
    shared_items = ordered(read_list(shared_files_txt, progress=False), marker.get("shuffle_seed"))
    skipped = {relpath for relpath, _ in info_from_marker(shared_db, marker).skipped}
    where = {relpath: make_key(i, relpath) for i, (relpath, _) in enumerate(shared_items) if relpath not in skipped}
    rows, missing = [], []
    for i, (relpath, label) in enumerate(ordered(read_list(files_txt, progress=False), shuffle_seed)):
        if "\t" in relpath or "\n" in relpath:
            raise DatabaseError(f"{files_txt}: image path {relpath!r} holds a tab or newline; a view cannot list it")
        if relpath in skipped:
            missing.append((relpath, "skipped in the shared database"))
            continue
        target = where.get(relpath)
        if target is None:
            raise DatabaseError(f"{files_txt}: {relpath!r} is not in {shared_files_txt}, so the shared database "
                                f"{shared_db} cannot serve this split; convert it on its own (without --shared)")
        rows.append((make_key(i, relpath), target, label))
    count, digest = keys_md5(key for key, _, _ in rows)
    if missing:
        protoio.atomic_write_bytes(view_dir.with_name(view_dir.name + ".skipped.txt"),
                                   "".join(f"{p}\t{why}\n" for p, why in missing).encode())
    write_view(view_dir, rows, {"database": os.path.relpath(shared_db, view_dir), "count": count,
                                "keys_md5": digest, "list": str(Path(files_txt).resolve()),
                                "list_md5": file_md5(files_txt), "shuffle_seed": shuffle_seed,
                                "backend": marker["backend"], "shape": marker.get("shape"), "skipped": len(missing)})
    return DbInfo(view_dir, "view", count, digest, tuple(marker["shape"]) if marker.get("shape") else None,
                  missing)


# ---------------------------------------------------------------- a whole data root

def convert_data_root(data_root, image_root, *, val_root=None, shared=False, backend="lmdb", splits=None,
                      progress=True, **options) -> dict[str, DbInfo]:
    """Every split of a data root -> <split>/<backend>/ (+ <split>/mean.binaryproto for *_train splits).

    image_root: where the listed paths start; val_root: the same for the *_valid lists when they lie elsewhere
    (ILSVRC-2012: train/n01440764/... and val/ILSVRC2012_val_00000001.JPEG, as Caffe's create_imagenet.sh has it).

    shared: only whole_train and whole_valid become databases; every other split becomes a key-list view
    <split>/keys/ over the whole database of its kind (for our engine; real Caffe needs per-split databases).
    options: those of convert_list (resize, encoded, shuffle_seed, gray, workers, skip_bad, commit_every).
    """
    data_root = Path(data_root)
    dirs = layout.list_dirs(data_root)
    if not dirs:
        raise DatabaseError(f"{data_root}: no <split>/files.txt here; make the split lists with tools/make_splits")
    if splits:
        wanted = set(splits)
        unknown = wanted - {d.name for d in dirs}
        if unknown:
            raise DatabaseError(f"{data_root}: no split(s) {', '.join(sorted(unknown))}")
        dirs = [d for d in dirs if d.name in wanted]
    results = {}
    whole = {kind: data_root / layout.list_folder("whole", kind) for kind in layout.PHASES}
    if shared:
        for kind, path in whole.items():
            if not (path / layout.LIST).is_file():
                raise DatabaseError(f"{path}/files.txt is missing: --shared serves every split from whole_{kind}")
        order = [whole["train"], whole["valid"]] + [d for d in dirs if d not in whole.values()]
    else:
        order = dirs
    for split in order:
        is_train = layout.is_train(split)
        mean_path = split / layout.MEAN if is_train else None
        if shared and split not in whole.values():
            base = whole["train" if is_train else "valid"]
            info = make_view(split / layout.VIEW_DIR, base / backend, split / layout.LIST, base / layout.LIST,
                             shuffle_seed=options.get("shuffle_seed"))
            if mean_path is not None and not mean_path.exists():
                protoio.write_mean(mean_path, compute_mean(split / layout.VIEW_DIR, progress=progress))
                info.mean_path = mean_path
        else:
            root = val_root if val_root is not None and split.name.endswith("_" + layout.PHASES[1]) else image_root
            info = convert_list(split / layout.LIST, root, split / backend, backend=backend,
                                mean_path=mean_path, progress=progress, **options)
        results[split.name] = info
    return results

