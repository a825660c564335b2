"""The ImageData and WindowData layers' sources: images named in a text file, decoded as Caffe's OpenCV does.

ImageData (image_data_layer.cpp): image_data_param.source lists "path label" lines (the label after the last
space; root_folder prefixed to the path); each image is read as cv::imread (colour BGR, or grey with
`is_color: false`), resized to new_height x new_width (cv::resize, INTER_LINEAR) when they are set, and goes
through the Data layer's pipeline (engine/data.py: prefetching, Caffe's DataTransformer, resume) as a raw Datum.
In list order, rewinding at the end; with `shuffle`, a new random order at every pass (numpy's, not Caffe's
Boost RNG: shuffled as Caffe's, not the same orders).

WindowData (window_data_layer.cpp, R-CNN's fine-tuning data): the window file holds, per image,
`# index`, the path, channels, height, width, the number of windows and one `label overlap x1 y1 x2 y2` line
each. Windows with overlap >= fg_threshold are foreground (their label), those under bg_threshold background
(label 0). Each batch is batch_size - int(batch_size * fg_fraction) background windows then the foreground ones,
each drawn at random (with a random mirror when transform_param.mirror), cut out with context_pad pixels of
context (`crop_mode` warp, or square), resized to crop_size and placed on a zero canvas; then
(x - mean) * window_data_param.scale. The draws are this source's own (numpy), so batches match Caffe's in
distribution; a window file with one window of each kind and no mirror gives Caffe's batches exactly.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from convnet_transfer.data.images import ImageError, read_image, resize_linear
from convnet_transfer.formats import caffe_pb2 as pb
from convnet_transfer.formats import protoio
from .data import DataError, DataLayerSource
from .layers import check_fields

__all__ = ["ImageDataSource", "WindowDataSource", "read_image_list", "read_window_file", "window_crop"]


def _atoi(text: str) -> int:
    """C's atoi: leading spaces, a sign and digits; 0 when there are none."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def read_image_list(source: Path, name: str) -> list[tuple[str, int]]:
    """ImageData's source file: (path, label) per line, the label after the last space (atoi, as Caffe)."""
    try:
        text = source.read_text()
    except OSError:
        raise DataError(f"layer '{name}': cannot open the image list {source} (image_data_param.source).") from None
    lines = []
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        pos = line.rfind(" ")
        lines.append((line[:pos] if pos >= 0 else line, _atoi(line[pos + 1:])))
    if not lines:
        raise DataError(f"layer '{name}': File is empty: {source} (image_data_param.source).")
    return lines


class _ImageListCursor:
    """ImageData's images as records (key: pass and index; value: a raw Datum of the decoded, resized image),
    in list order or, with `shuffle`, in a new order for every pass; the interface of data._Cursor."""

    seekable = True

    def __init__(self, name: str, source: Path, p: pb.ImageDataParameter, seed: int):
        self.name, self.path = name, source
        self.lines = read_image_list(source, name)
        self.size = len(self.lines)
        self.root, self.gray = p.root_folder, not p.is_color
        self.new_size = (int(p.new_height), int(p.new_width))
        if (self.new_size[0] > 0) != (self.new_size[1] > 0):
            raise DataError(f"layer '{name}': Current implementation requires new_height and new_width to be set "
                            f"at the same time.")
        self.shuffle, self.seed = bool(p.shuffle), seed
        self.seek(None)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.size)

    def seek(self, key: bytes | None, skip: int = 0) -> None:
        epoch, index = (int(v) for v in key.split(b":")) if key else (0, skip)
        self.epoch, self.index, self.order = epoch, index, self._order(epoch)
        self._lookahead = self._record()

    def _record(self) -> tuple[bytes, bytes]:
        path, label = self.lines[self.order[self.index]]
        image = self.read(path)
        datum = pb.Datum(channels=image.shape[2], height=image.shape[0], width=image.shape[1], label=label,
                         data=np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes())
        return f"{self.epoch}:{self.index}".encode(), datum.SerializeToString()

    def read(self, path: str) -> np.ndarray:
        """ReadImageToCVMat(root_folder + path, new_height, new_width, is_color): H x W x C uint8."""
        try:
            image = read_image(self.root + path, gray=self.gray)
        except (ImageError, OSError) as err:
            raise DataError(f"layer '{self.name}': Could not load {self.root + path} ({err})") from None
        return resize_linear(image, *self.new_size) if self.new_size[0] > 0 else image

    def path_of(self, key: bytes) -> str:
        """The image a record key names."""
        epoch, index = (int(v) for v in key.split(b":"))
        return self.root + self.lines[self._order(epoch)[index]][0]

    def next(self) -> tuple[bytes, bytes]:
        record = self._lookahead
        self.index += 1
        if self.index == self.size:
            self.epoch, self.index = self.epoch + 1, 0
            self.order = self._order(self.epoch)
        self._lookahead = self._record()
        return record

    def peek_key(self) -> bytes:
        return self._lookahead[0]

    def close(self) -> None:
        pass


class ImageDataSource(DataLayerSource):
    """Batches for an ImageData layer: the Data layer's pipeline on the images of an image list."""
    layer_type, params_name = "ImageData", "image_data_param"

    def _open_cursor(self, layer: pb.LayerParameter, source: Path) -> _ImageListCursor:
        if len(layer.top) != 2 or len(layer.bottom):
            raise DataError(f"layer '{layer.name}': ImageData Layer produces 2 top blob(s) as output, from no "
                            f"bottom.")
        check_fields(layer, {"image_data_param": None, "transform_param": _TRANSFORM_FIELDS})
        seed = int(np.random.Generator(np.random.PCG64(self.rng_seed)).integers(0, 2 ** 63))
        return _ImageListCursor(layer.name, source, layer.image_data_param, seed)

    def __init__(self, layer: pb.LayerParameter, phase: str, device="cpu", *, seed: int = 0, **kwargs):
        self.rng_seed = seed
        super().__init__(layer, phase, device, seed=seed, **kwargs)

    def _decode(self, key: bytes, value, shape: tuple | None = None) -> tuple[np.ndarray, int]:
        array, label = super()._decode(key, value)
        if shape is not None and array.shape != tuple(shape):
            path = self._cursor.path_of(key)
            raise DataError(f"layer '{self.name}': image {path} is {array.shape[1]}x{array.shape[2]}, the first "
                            f"{shape[1]}x{shape[2]}; the engine's tops have one shape: set image_data_param's "
                            f"new_height and new_width.")
        return array, label


_TRANSFORM_FIELDS = {"scale", "mirror", "crop_size", "mean_file", "mean_value"}


# ---------------------------------------------------------------- WindowData

def read_window_file(source: Path, name: str, fg_threshold: float, bg_threshold: float, root: str = ""):
    """The window file: ([(path, (channels, height, width))] by image index, foreground windows, background
    windows), a window being (image index, label, x1, y1, x2, y2) with label 0 for the background ones."""
    try:
        tokens = source.read_text().split()
    except OSError:
        raise DataError(f"layer '{name}': Failed to open window file {source}") from None
    if len(tokens) < 2:
        raise DataError(f"layer '{name}': Window file is empty: {source}")
    images, fg, bg = [], [], []
    pos = 0
    try:
        while pos < len(tokens):
            if tokens[pos] != "#":
                raise ValueError(f"'#' expected, found {tokens[pos]!r}")
            index, path = int(tokens[pos + 1]), root + tokens[pos + 2]
            images.append((path, tuple(int(t) for t in tokens[pos + 3:pos + 6])))
            count, pos = int(tokens[pos + 6]), pos + 7
            for _ in range(count):
                label, overlap = int(tokens[pos]), float(np.float32(tokens[pos + 1]))
                box = tuple(int(t) for t in tokens[pos + 2:pos + 6])
                pos += 6
                if overlap >= np.float32(fg_threshold):
                    if label <= 0:
                        raise ValueError(f"a foreground window (overlap {overlap}) of image {index} has label "
                                         f"{label}; foreground labels are > 0")
                    fg.append((index, label) + box)
                elif overlap < np.float32(bg_threshold):
                    bg.append((index, 0) + box)
    except (ValueError, IndexError) as err:
        raise DataError(f"layer '{name}': window file {source} is malformed near token {pos} ({err}).") from None
    return images, fg, bg


def _round(x) -> int:
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(float(x)) + 0.5), float(x)))


def window_crop(image: np.ndarray, box: tuple[int, int, int, int], crop: int, context_pad: int, square: bool,
                mirror: bool) -> tuple[np.ndarray, int, int]:
    """WindowDataLayer's cut-out of window `box` (x1, y1, x2, y2) of `image` (H x W x C uint8): (the resized,
    maybe mirrored, pixels, pad_h, pad_w: where they go on the crop x crop canvas). Caffe's float32 arithmetic."""
    f = np.float32
    x1, y1, x2, y2 = box
    size = (crop, crop)
    pad_w = pad_h = 0
    if context_pad > 0 or square:
        context_scale = f(crop) / f(crop - 2 * context_pad)
        half_h, half_w = f(f(y2 - y1 + 1) / 2.0), f(f(x2 - x1 + 1) / 2.0)
        center_x, center_y = f(x1) + half_w, f(y1) + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1, x2 = _round(center_x - half_w * context_scale), _round(center_x + half_w * context_scale)
        y1, y2 = _round(center_y - half_h * context_scale), _round(center_y + half_h * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pads = [max(0, -x1), max(0, -y1), max(0, x2 - image.shape[1] + 1), max(0, y2 - image.shape[0] + 1)]
        x1, y1, x2, y2 = x1 + pads[0], y1 + pads[1], x2 - pads[2], y2 - pads[3]
        scale_x, scale_y = f(crop) / f(unclipped_w), f(crop) / f(unclipped_h)
        width, height = _round(f(x2 - x1 + 1) * scale_x), _round(f(y2 - y1 + 1) * scale_y)
        pad_x1, pad_y1, pad_x2 = (_round(f(pads[i]) * s) for i, s in ((0, scale_x), (1, scale_y), (2, scale_x)))
        pad_h, pad_w = pad_y1, (pad_x2 if mirror else pad_x1)
        size = (min(height, crop - pad_h), min(width, crop - pad_w))
    if not (0 <= x1 <= x2 < image.shape[1] and 0 <= y1 <= y2 < image.shape[0]):
        raise DataError(f"window ({x1}, {y1}, {x2}, {y2}) is outside its {image.shape[1]}x{image.shape[0]} image")
    pixels = resize_linear(image[y1:y2 + 1, x1:x2 + 1], *size)
    return (pixels[:, ::-1] if mirror else pixels), pad_h, pad_w


class WindowDataSource:
    """Batches {data, label} for a WindowData layer (see the module docstring), made when asked for."""

    def __init__(self, layer: pb.LayerParameter, phase: str, device: torch.device | str = "cpu", *, seed: int = 0,
                 workers: int | None = None):
        _check_window_layer(layer)
        p, tp = layer.window_data_param, layer.transform_param
        self.name, self.tops, self.device = layer.name, list(layer.top), torch.device(device)
        self.batch_size, self.crop, self.mirror = int(p.batch_size), int(tp.crop_size), bool(tp.mirror)
        self.scale, self.context_pad, self.square = np.float32(p.scale), int(p.context_pad), p.crop_mode == "square"
        if self.crop <= 0 or self.batch_size <= 0:
            raise DataError(f"layer '{self.name}': transform_param.crop_size and window_data_param.batch_size must "
                            f"be set and positive.")
        self.images, self.fg, self.bg = read_window_file(Path(p.source), self.name, p.fg_threshold, p.bg_threshold,
                                                         p.root_folder)
        if not self.fg or not self.bg:
            raise DataError(f"layer '{self.name}': {p.source} has {len(self.fg)} foreground and {len(self.bg)} "
                            f"background windows; WindowData needs both.")
        channels = self.images[0][1][0]
        if channels != 3:
            raise DataError(f"layer '{self.name}': the window file gives {channels} channels; WindowData reads "
                            f"colour images (3 channels).")
        self.mean, self.mean_per_pixel = self._mean(tp, channels), tp.HasField("mean_file")
        self.num_fg = int(np.float32(self.batch_size) * np.float32(p.fg_fraction))
        self.cache = {} if p.cache_images else None
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.shapes = {self.tops[0]: (self.batch_size, channels, self.crop, self.crop)}
        if len(self.tops) > 1:
            self.shapes[self.tops[1]] = (self.batch_size,)

    def _mean(self, tp: pb.TransformationParameter, channels: int) -> np.ndarray | None:
        """The mean file's centre crop_size square (C, crop, crop), or the mean values (C, 1, 1), or None."""
        if tp.HasField("mean_file") and len(tp.mean_value):
            raise DataError(f"layer '{self.name}': Cannot specify mean_file and mean_value at the same time")
        if tp.HasField("mean_file"):
            mean = np.asarray(protoio.read_mean(tp.mean_file), np.float32)
            off = (mean.shape[2] - self.crop) // 2
            if off < 0 or mean.shape[1] < off + self.crop or mean.shape[0] != channels:
                raise DataError(f"layer '{self.name}': mean file {tp.mean_file} of shape {mean.shape} cannot be "
                                f"cropped to {channels}x{self.crop}x{self.crop}.")
            return mean[:, off:off + self.crop, off:off + self.crop]
        if len(tp.mean_value):
            if len(tp.mean_value) not in (1, channels):
                raise DataError(f"layer '{self.name}': Specify either 1 mean_value or as many as channels: "
                                f"{channels}")
            return np.resize(np.asarray(tp.mean_value, np.float32), channels).reshape(channels, 1, 1)
        return None

    def _image(self, index: int) -> np.ndarray:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        if not 0 <= index < len(self.images):
            raise DataError(f"layer '{self.name}': a window names image {index}, the file lists "
                            f"{len(self.images)} images (numbered from 0, in order).")
        path = self.images[index][0]
        try:
            image = read_image(path)
        except (ImageError, OSError) as err:
            raise DataError(f"layer '{self.name}': Could not open or find file {path} ({err})") from None
        if self.cache is not None:
            self.cache[index] = image
        return image

    def _item(self, out: np.ndarray, window: tuple, mirror: bool) -> None:
        """One window, cut out, placed on `out` (C, crop, crop: zeros), mean subtracted, scaled."""
        pixels, pad_h, pad_w = window_crop(self._image(window[0]), window[2:], self.crop, self.context_pad,
                                           self.square, mirror)
        h, w = pixels.shape[:2]
        rows, cols = slice(pad_h, pad_h + h), slice(pad_w, pad_w + w)
        values = pixels.transpose(2, 0, 1).astype(np.float32)
        if self.mean is not None:
            values -= self.mean[:, rows, cols] if self.mean_per_pixel else self.mean
        out[:, rows, cols] = values * self.scale

    def next_batch(self) -> dict[str, torch.Tensor]:
        data = np.zeros(self.shapes[self.tops[0]], np.float32)
        labels = np.empty(self.batch_size, np.float32)
        item = 0
        for windows, count in ((self.bg, self.batch_size - self.num_fg), (self.fg, self.num_fg)):
            for _ in range(count):
                window = windows[int(self.rng.integers(0, 2 ** 32)) % len(windows)]
                mirror = self.mirror and bool(int(self.rng.integers(0, 2 ** 32)) % 2)
                self._item(data[item], window, mirror)
                labels[item] = window[1]
                item += 1
        batch = {self.tops[0]: torch.from_numpy(data).to(self.device)}
        if len(self.tops) > 1:
            batch[self.tops[1]] = torch.from_numpy(labels).to(self.device)
        return batch

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        pass


def _check_window_layer(layer: pb.LayerParameter) -> None:
    """The fields Caffe's WindowData reads; those it ignores are refused with where Caffe reads them instead."""
    where = f"layer '{layer.name}' (type WindowData)"
    for field in ("mean_file", "crop_size", "mirror"):
        if layer.window_data_param.HasField(field):
            raise DataError(f"{where}: window_data_param.{field} is ignored by Caffe's WindowData, which reads "
                            f"transform_param.{field}: move it there.")
    if layer.transform_param.HasField("scale"):
        raise DataError(f"{where}: transform_param.scale is ignored by Caffe's WindowData, which scales by "
                        f"window_data_param.scale (a V1 net's scale moved there by the upgrade is lost, as in "
                        f"Caffe): set window_data_param.scale.")
    if len(layer.top) != 2 or len(layer.bottom):
        raise DataError(f"{where}: WindowData Layer produces 2 top blob(s) as output, from no bottom.")
    check_fields(layer, {"window_data_param": _WINDOW_FIELDS,
                         "transform_param": {"mirror", "crop_size", "mean_file", "mean_value"}})


_WINDOW_FIELDS = {"source", "scale", "batch_size", "fg_threshold", "bg_threshold", "fg_fraction", "context_pad",
                  "crop_mode", "cache_images", "root_folder"}
