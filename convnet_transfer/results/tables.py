"""Caffe's log tables: rows under tools/extra/parse_log.py's column names (`NumIters, Seconds, LearningRate,
<outputs>`), read and written as its CSV files, stitched across runs.

    Table                   columns + a float64 array; last(), best(), write_csv(), read_csv(), concat()
    accuracy_column(table)  the top-1 accuracy column of a test table
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["Table", "accuracy_column"]


@dataclass
class Table:
    """Rows under Caffe parse_log.py's column names, `NumIters` first, sorted by it. Missing values are NaN."""
    columns: list[str]
    data: np.ndarray   # float64, shape (rows, len(columns))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[:, self.columns.index(name)]

    def last(self, name: str) -> tuple[int, float]:
        """(NumIters, value) of the last row where the column has a value; (-1, NaN) when none."""
        if name not in self.columns:
            return -1, math.nan
        ok = np.flatnonzero(~np.isnan(self[name]))
        if not len(ok):
            return -1, math.nan
        return int(self.data[ok[-1], 0]), float(self[name][ok[-1]])

    def best(self, name: str) -> tuple[int, float]:
        """(NumIters, value) of the row with the highest value of the column; (-1, NaN) when none."""
        if name not in self.columns or np.isnan(self[name]).all():
            return -1, math.nan
        i = int(np.nanargmax(self[name]))
        return int(self.data[i, 0]), float(self[name][i])

    def write_csv(self, path: str | os.PathLike, delimiter: str = ",") -> None:
        """CSV like parse_log.py's `<log>.train` / `<log>.test`: header row, NumIters as an integer, empty = NaN."""
        from convnet_transfer.formats.protoio import atomic_write_bytes
        text = io.StringIO(newline="")
        writer = csv.writer(text, delimiter=delimiter)
        writer.writerow(self.columns)
        for row in self.data.tolist():
            writer.writerow([int(row[0])] + ["" if v != v else v for v in row[1:]])
        atomic_write_bytes(path, text.getvalue().encode(), durable=False)

    @classmethod
    def read_csv(cls, path: str | os.PathLike, delimiter: str = ",") -> "Table":
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
        data = [[float(v) if v else math.nan for v in row] for row in rows[1:]]
        return cls(rows[0], np.array(data, dtype=float).reshape(len(data), len(rows[0])))

    @classmethod
    def concat(cls, parts: list[tuple["Table", float]]) -> "Table":
        """Stitch tables in order (each with a Seconds offset): where NumIters repeat the later row wins."""
        parts = [(t, off) for t, off in parts if len(t)]
        if not parts:
            return cls(["NumIters", "Seconds", "LearningRate"], np.zeros((0, 3)))
        columns = []
        for t, _ in parts:
            columns += [c for c in t.columns if c not in columns]
        blocks = []
        for t, off in parts:
            block = np.full((len(t), len(columns)), np.nan)
            block[:, [columns.index(c) for c in t.columns]] = t.data
            block[:, 1] = np.round(block[:, 1] + off, 6)
            blocks.append(block)
        data = np.concatenate(blocks)
        # keep the last occurrence of each iteration: unique over the reversed rows
        _, first_in_reversed = np.unique(data[::-1, 0], return_index=True)
        keep = len(data) - 1 - first_in_reversed
        return cls(columns, data[np.sort(keep)][np.argsort(data[np.sort(keep), 0], kind="stable")])


def accuracy_column(table: Table) -> str | None:
    """The top-1 accuracy column of a test table: `accuracy`, else the first name with "acc" but no top-5."""
    if "accuracy" in table.columns:
        return "accuracy"
    for name in table.columns[3:]:
        low = name.lower()
        if "acc" in low and not re.search(r"top.?5|_5$|@5", low):
            return name
    return None
