"""Image decoding and resizing as Caffe's `convert_imageset` does it with OpenCV, in Pillow + numpy.

- `read_image(path, gray=False)` is `cv::imread(path, IMREAD_COLOR | IMREAD_GRAYSCALE)` (OpenCV's own for whole
  JPEG files when opencv-python-headless is installed, else Pillow): an H x W x C uint8
  array, C = 3 in BGR order (grayscale and palette files expanded, alpha dropped, EXIF orientation of JPEGs
  applied as OpenCV 4 does) or C = 1 with `gray` (a JPEG's luma plane as libjpeg decodes it, a PNG's gray as
  libpng computes it: both exactly as OpenCV; other formats' gray follows libpng's weights).
- `resize_linear(image, height, width)` is `cv::resize(..., INTER_LINEAR)` for uint8 images: OpenCV's own
  (opencv-python-headless, a dependency) when it imports, else numpy reproducing OpenCV's fixed-point
  arithmetic (11-bit weights, the SIMD vertical pass's rounding, the 2x area shortcut and the same-size copy).
  Both equal the OpenCV that Caffe links bit for bit (tests/test_caffe_db_compat.py checks each); OpenCV's is
  about 10x faster. CONVNET_TRANSFER_NO_OPENCV=1 forces numpy (and Pillow for decoding).
- `encode_image` / `decode_image`: `cv::imencode` / `cv::imdecode(-1)` for encoded Datums.
"""
from __future__ import annotations

import functools
import io
import os

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageError", "read_image", "decode_image", "resize_linear", "encode_image"]

_ORIENTATION = 0x0112   # EXIF tag
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


class ImageError(ValueError):
    """An image file that cannot be read or decoded."""


def _cmyk_to_bgr(image: Image.Image) -> np.ndarray:
    """OpenCV's icvCvt_CMYK2BGR on the values libjpeg returns (Pillow inverts Adobe files' values: undo it)."""
    cmyk = np.asarray(image).astype(np.int32)
    if "adobe" in image.info:
        cmyk = 255 - cmyk
    k = cmyk[:, :, 3:]
    return (k - ((255 - cmyk[:, :, 2::-1]) * k >> 8)).astype(np.uint8)    # (y, m, c) -> (B, G, R)


def _to_array(image: Image.Image, gray: bool, native: bool = False, fmt: str | None = None) -> np.ndarray:
    if image.mode.startswith("I;16") or (image.mode == "I" and fmt == "PNG"):
        # 16-bit grey: OpenCV's 8-bit read keeps the high byte (png_set_strip_16); Pillow's convert would clip
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)[:, :, None]
        return grey if gray or native else np.repeat(grey, 3, axis=2)
    if image.mode == "CMYK" and fmt == "JPEG":
        bgr = _cmyk_to_bgr(image)
        if not gray:
            return bgr
        b, g, r = (bgr[:, :, i].astype(np.int32) for i in range(3))   # icvCvt_CMYK2Gray: 14-bit, rounded
        return ((b * 1868 + g * 9617 + r * 4899 + 8192) >> 14).astype(np.uint8)[:, :, None]
    if gray:
        if image.mode in ("L", "1", "I;16", "I"):
            return np.asarray(image.convert("L"))[:, :, None]
        # OpenCV's PNG reader: png_set_rgb_to_gray(0.299, 0.587), i.e. libpng's 15-bit weights, truncated,
        # grey pixels kept as they are. (JPEGs never get here: libjpeg's luma plane is used, as OpenCV.)
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
        r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
        gray_values = np.where((r == g) & (r == b), r, (r * 9797 + g * 19234 + b * 3737) >> 15)
        return gray_values.astype(np.uint8)[:, :, None]
    if native and image.mode in ("L", "I;16", "I"):
        return np.asarray(image.convert("L"))[:, :, None]
    if native and image.mode in ("RGBA", "LA", "PA") or (native and image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)[:, :, ::-1]   # BGR as a view; resize_linear reads it without a copy


def _open(source, gray: bool, native: bool) -> np.ndarray:
    image = Image.open(source)
    if image.format == "JPEG" and gray and image.mode in ("RGB", "YCbCr"):
        # libjpeg's own YCbCr -> grayscale output (the Y plane), as OpenCV asks for with IMREAD_GRAYSCALE
        image.draft("L", image.size)
    image.load()
    fmt = image.format
    if fmt == "JPEG" and not native and image.getexif().get(_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)  # OpenCV >= 3.1 applies the EXIF orientation in imread
    return _to_array(image, gray, native, fmt)


def _whole_jpeg(path: str | os.PathLike) -> bool:
    """Whether a file starts with JPEG's SOI marker and ends with its EOI marker (not truncated)."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8\xff" and f.read(2) == b"\xff\xd9"
    except OSError:
        return False


def read_image(path: str | os.PathLike, gray: bool = False) -> np.ndarray:
    """Decode an image file like cv::imread (COLOR or GRAYSCALE): H x W x C uint8, BGR when C = 3.

    A whole JPEG file is read by OpenCV's own cv2.imread when it is installed (twice as fast as Pillow);
    everything else, and a truncated JPEG (which cv::imread would keep half-decoded), goes through Pillow,
    which stops on it with the file named."""
    cv2 = opencv()
    if cv2 is not None and _whole_jpeg(path):
        image = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        if image is not None:
            return image[:, :, None] if image.ndim == 2 else image
    try:
        with open(path, "rb") as f:
            return _open(f, gray, native=False)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow raises these for unreadable or truncated files
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def decode_image(data: bytes, gray: bool | None = None) -> np.ndarray:
    """Decode encoded image bytes. gray=None is cv::imdecode(-1) (native channels: 1 for grayscale, 3 BGR,
    4 BGRA with alpha) as Caffe's DecodeDatumNative; True/False force 1 or 3 channels."""
    try:
        return _open(io.BytesIO(data), bool(gray), native=gray is None)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot decode encoded image bytes ({err})") from None


def encode_image(image: np.ndarray, ext: str) -> bytes:
    """cv::imencode("." + ext, image): JPEG at OpenCV's default quality 95, or PNG (lossless)."""
    ext = ext.lower().lstrip(".")
    channels = image.shape[2] if image.ndim == 3 else 1
    array = image[:, :, 0] if channels == 1 else image[:, :, 2::-1] if channels == 3 else image[:, :, [2, 1, 0, 3]]
    pil = Image.fromarray(np.ascontiguousarray(array))
    out = io.BytesIO()
    if ext in ("jpg", "jpeg", "jpe"):
        pil.save(out, format="JPEG", quality=95)
    elif ext == "png":
        pil.save(out, format="PNG", compress_level=1)
    elif ext in ("bmp", "tif", "tiff", "ppm", "pgm"):
        pil.save(out, format={"bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}.get(ext, "PPM"))
    else:
        raise ImageError(f"cannot encode images as {ext!r}: use jpg or png")
    return out.getvalue()


# ---------------------------------------------------------------- cv::resize(INTER_LINEAR) for uint8

def _linear_taps(src: int, dst: int, clamp_weight: bool):
    """OpenCV's source index and 11-bit weights per destination coordinate (resizeGeneric, fixed point)."""
    scale = 1.0 / (dst / src)                                   # scale_x = 1./inv_scale_x, in double
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = pos - first.astype(np.float32)                      # float arithmetic, as `fx -= sx`
    if clamp_weight:                                           # only the x pass moves weights at the borders
        low, high = first < 0, first >= src - 1
        frac[low | high] = 0
        first[low] = 0
        first[high] = src - 1
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int32)
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int32)
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), w0, w1


@functools.lru_cache(maxsize=64)
def _resize_plan(src_h: int, src_w: int, channels: int, height: int, width: int, reverse: bool = False):
    """Gather indices and weights for one (source size -> destination size), cached: ImageNet has few sizes.
    reverse: read the channels in reverse order (an RGB buffer seen as BGR)."""
    y0, y1, b0, b1 = _linear_taps(src_h, height, clamp_weight=False)
    x0, x1, a0, a1 = _linear_taps(src_w, width, clamp_weight=True)
    rows = np.union1d(y0, y1)
    lanes = np.arange(channels)[::-1] if reverse else np.arange(channels)
    return (rows, (x0[:, None] * channels + lanes).ravel(), (x1[:, None] * channels + lanes).ravel(),
            np.repeat(a0, channels), np.repeat(a1, channels),
            np.searchsorted(rows, y0), np.searchsorted(rows, y1), b0[:, None], b1[:, None])


@functools.cache
def opencv():
    """OpenCV's Python module (cv2), one thread per process (the converter runs a process per core), or None
    when it is not installed or CONVNET_TRANSFER_NO_OPENCV=1."""
    if os.environ.get("CONVNET_TRANSFER_NO_OPENCV") == "1":
        return None
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)
    return cv2


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv::resize(image, Size(width, height), 0, 0, INTER_LINEAR) for an H x W x C uint8 image, bit-exact."""
    src_h, src_w, channels = image.shape
    if (src_h, src_w) == (height, width):
        return image.copy()
    cv2 = opencv()
    if cv2 is not None:
        if channels == 3 and image.strides[2] < 0 and image[:, :, ::-1].flags.c_contiguous:
            # read_image's BGR is a view of Pillow's RGB: resize the RGB (copying the view costs 5x the resize)
            # and swap the channels of the small result
            rgb = cv2.resize(image[:, :, ::-1], (width, height), interpolation=cv2.INTER_LINEAR)
            return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        resized = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
        return resized.reshape(height, width, channels)
    return _resize_linear_numpy(image, height, width)


def _resize_linear_numpy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    src_h, src_w, channels = image.shape
    if src_w == 2 * width and src_h == 2 * height:           # OpenCV switches to INTER_AREA for exact 2x
        quads = image.reshape(height, 2, width, 2, channels).astype(np.uint16)
        return ((quads.sum(axis=(1, 3)) + 2) >> 2).astype(np.uint8)
    reverse = channels > 1 and image.strides[2] < 0 and image[:, :, ::-1].flags.c_contiguous
    source = image[:, :, ::-1] if reverse else np.ascontiguousarray(image)
    rows, cols0, cols1, a0, a1, top_row, bottom_row, b0, b1 = _resize_plan(src_h, src_w, channels, height, width,
                                                                           reverse)
    flat = source.reshape(src_h, src_w * channels)
    if len(rows) != src_h:
        flat = flat[rows]
    # horizontal pass (exact integers, weights scaled by 2048), on the source rows needed
    horizontal = flat[:, cols0].astype(np.int32)
    horizontal *= a0
    right = flat[:, cols1].astype(np.int32)
    right *= a1
    horizontal += right
    horizontal >>= 4
    # vertical pass as OpenCV's SIMD VResizeLinearVec_32s8u: mulhi(value >> 4, beta), then (sum + 2) >> 2;
    # the weights sum to 2048, so the result is always within 0..255
    out = horizontal[top_row]
    out *= b0
    out >>= 16
    bottom = horizontal[bottom_row]
    bottom *= b1
    bottom >>= 16
    out += bottom
    out += 2
    out >>= 2
    return out.astype(np.uint8).reshape(height, width, channels)
