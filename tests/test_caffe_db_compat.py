"""Datum databases and mean files interchangeable with real BVLC Caffe's (tools/install_caffe builds it).

- a database convert_imageset writes equals ours record for record (keys, and values byte for byte: same
  OpenCV decoding and resize), with and without resize, raw and encoded, colour and gray;
- compute_image_mean's mean of a database equals ours;
- Caffe's Data layer (pycaffe) reads our LMDB and LevelDB to the same arrays and labels.
Also, without Caffe: our cv::resize emulation against OpenCV itself, through a small C++ program (needs g++
and libopencv-dev, Caffe's build dependencies).
"""
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from convnet_transfer.data import databases
from convnet_transfer.formats import protoio
from convnet_transfer.data.images import read_image, resize_linear

from test_databases import make_images, records, write_list


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compat_images")
    items = make_images(folder, 16, seed=11, sizes=(20, 90), gray_every=7)
    # names without spaces: convert_imageset's root + path has no quoting problem, but keep the list plain
    items = [(p.replace(" ", "_"), lab, rgb) for p, lab, rgb in items]
    for p in folder.rglob("* *"):
        p.rename(p.with_name(p.name.replace(" ", "_")))
    return folder, items, write_list(folder.parent / "compat_files.txt", items)


def convert_imageset(caffe, folder, files, db, *flags):
    caffe.run("convert_imageset", *flags, f"{folder}/", files, db)
    return db


def max_abs_diff(ours, theirs):
    worst = 0
    for (k1, v1), (k2, v2) in zip(records(ours), records(theirs)):
        a, b = databases.decode_datum(v1)[0], databases.decode_datum(v2)[0]
        assert a.shape == b.shape, (k1, a.shape, b.shape)
        worst = max(worst, int(np.abs(a.astype(int) - b.astype(int)).max()))
    return worst


@pytest.mark.parametrize("flags,options", [
    (["--resize_height=32", "--resize_width=40"], dict(resize=(32, 40))),
    ([], dict(resize=None)),
    (["--gray", "--resize_height=24", "--resize_width=24"], dict(resize=(24, 24), gray=True)),
    (["--encoded"], dict(resize=None, encoded=True)),
    (["--encoded", "--resize_height=20", "--resize_width=20"], dict(resize=(20, 20), encoded=True)),
    (["--backend=leveldb", "--resize_height=16", "--resize_width=16"], dict(resize=(16, 16), backend="leveldb")),
], ids=["resize", "no-resize", "gray", "encoded", "encoded-resized", "leveldb"])
def test_convert_imageset_database_equals_ours(real_caffe, image_set, tmp_path, flags, options):
    folder, items, files = image_set
    theirs = convert_imageset(real_caffe, folder, files, tmp_path / "theirs", *flags)
    databases.convert_list(files, folder, tmp_path / "ours", workers=0, progress=False, **options)
    ours, caffe_records = records(tmp_path / "ours"), records(theirs)
    assert [k for k, _ in ours] == [k for k, _ in caffe_records]
    worst = max_abs_diff(tmp_path / "ours", theirs)
    identical = sum(a == b for (_, a), (_, b) in zip(ours, caffe_records))
    print(f"{flags}: {identical}/{len(ours)} records byte-identical, max abs pixel difference {worst}")
    jpeg_identical = all(a == b for (key, a), (_, b) in zip(ours, caffe_records) if key.endswith(b".JPEG"))
    if options.get("encoded") and options.get("resize"):   # re-encoded: same pixels; PNG bytes differ
        assert worst == 0 and jpeg_identical
    else:
        assert worst == 0 and identical == len(ours)


def test_compute_image_mean_equals_ours(real_caffe, image_set, tmp_path):
    folder, items, files = image_set
    db = tmp_path / "db"
    databases.convert_list(files, folder, db, resize=(32, 32), workers=0, progress=False,
                           mean_path=tmp_path / "ours.binaryproto")
    real_caffe.run("compute_image_mean", db, tmp_path / "caffe.binaryproto")
    caffe_mean = protoio.read_mean(tmp_path / "caffe.binaryproto")
    ours = protoio.read_mean(tmp_path / "ours.binaryproto")
    print("per-channel means (BGR) ours:", ours.mean(axis=(1, 2)), "caffe:", caffe_mean.mean(axis=(1, 2)))
    assert np.array_equal(ours, caffe_mean)
    caffe_blob = protoio.read_binary(tmp_path / "caffe.binaryproto", protoio.pb.BlobProto)
    our_blob = protoio.read_binary(tmp_path / "ours.binaryproto", protoio.pb.BlobProto)
    assert caffe_blob == our_blob
    # and the mean of a database Caffe wrote, computed by us
    theirs = convert_imageset(real_caffe, folder, files, tmp_path / "theirs", "--resize_height=32",
                              "--resize_width=32")
    assert np.array_equal(databases.compute_mean(theirs), caffe_mean)


DATA_LAYER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import caffe
    source, backend, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    net_text = '''
    name: "read"
    layer { name: "data" type: "Data" top: "data" top: "label"
            data_param { source: "%s" backend: %s batch_size: %d } }
    ''' % (source, backend, n)
    open(out + ".prototxt", "w").write(net_text)
    caffe.set_mode_cpu()
    net = caffe.Net(out + ".prototxt", caffe.TEST)
    net.forward()
    np.save(out + ".data.npy", net.blobs["data"].data)
    np.save(out + ".label.npy", net.blobs["label"].data)
""")


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_caffe_data_layer_reads_our_database(real_caffe, image_set, tmp_path, backend):
    folder, items, files = image_set
    db = tmp_path / "db"
    databases.convert_list(files, folder, db, backend=backend, resize=(28, 28), shuffle_seed=5, workers=0,
                           progress=False)
    script = tmp_path / "read.py"
    script.write_text(DATA_LAYER_SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, script, db, backend.upper(), str(len(items)), out],
                          env=real_caffe.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data, labels = np.load(f"{out}.data.npy"), np.load(f"{out}.label.npy")
    ours = [databases.decode_datum(v) for _, v in records(db)]
    assert np.array_equal(data, np.stack([a for a, _ in ours]).astype(np.float32))
    assert labels.astype(int).tolist() == [label for _, label in ours]


# ---------------------------------------------------------------- OpenCV itself, without Caffe

CV_PROGRAM = r"""
#include <opencv2/opencv.hpp>
#include <cstdio>
#include <cstdlib>
// cvresize IMAGE HEIGHT WIDTH GRAY OUT: cv::imread (+ cv::resize INTER_LINEAR when HEIGHT > 0), raw HxWxC bytes
int main(int argc, char** argv) {
  int h = atoi(argv[2]), w = atoi(argv[3]), gray = atoi(argv[4]);
  cv::Mat img = cv::imread(argv[1], gray ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR), out;
  if (!img.data) return 2;
  if (h > 0) cv::resize(img, out, cv::Size(w, h)); else out = img;
  FILE* f = fopen(argv[5], "wb");
  for (int r = 0; r < out.rows; ++r) fwrite(out.ptr<uchar>(r), 1, out.cols * out.channels(), f);
  fclose(f);
  printf("%d %d %d\n", out.rows, out.cols, out.channels());
  return 0;
}
"""


@pytest.fixture(scope="module")
def opencv_program(tmp_path_factory):
    if not shutil.which("g++") or subprocess.run(["pkg-config", "--exists", "opencv4"]).returncode != 0:
        pytest.skip("g++ and libopencv-dev (pkg-config opencv4) are needed to compare with OpenCV itself")
    folder = tmp_path_factory.mktemp("opencv")
    source, program = folder / "cvresize.cpp", folder / "cvresize"
    source.write_text(CV_PROGRAM)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "opencv4"], capture_output=True, text=True).stdout
    subprocess.run(["g++", "-O1", str(source), "-o", str(program)] + flags.split(), check=True)
    return program


@pytest.mark.parametrize("resize", ["opencv-python", "numpy"])
def test_decode_and_resize_equal_opencv(opencv_program, tmp_path, resize, monkeypatch):
    from convnet_transfer.data import images
    if resize == "numpy":
        monkeypatch.setattr(images, "opencv", lambda: None)
    elif images.opencv() is None:
        pytest.skip("opencv-python-headless is not installed: only the numpy resize is used")
    rng = np.random.default_rng(4)
    shapes = [(375, 500), (512, 512), (256, 256), (100, 80), (31, 617), (600, 45)]
    targets = [(256, 256), (227, 227), (64, 300), (13, 7)]
    worst = {}
    for n, (h, w) in enumerate(shapes):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        for ext in ("jpg", "png"):
            path = tmp_path / f"{n}.{ext}"
            Image.fromarray(rgb).save(path, quality=85)
            for gray in (False, True):
                for target in [(0, 0)] + targets + [(h // 2, w // 2) if h % 2 == 0 and w % 2 == 0 else (9, 9)]:
                    out = tmp_path / "out.raw"
                    shape = subprocess.run([str(opencv_program), str(path), str(target[0]), str(target[1]),
                                            str(int(gray)), str(out)], capture_output=True, text=True, check=True)
                    expected = np.fromfile(out, np.uint8).reshape([int(v) for v in shape.stdout.split()])
                    ours = read_image(path, gray=gray)
                    if target[0]:
                        ours = resize_linear(ours, *target)
                    diff = int(np.abs(ours.astype(int) - expected).max())
                    worst[(ext, gray)] = max(worst.get((ext, gray), 0), diff)
    cmyk = tmp_path / "cmyk.jpg"   # ImageNet holds a few CMYK JPEGs
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).convert("CMYK").save(cmyk, quality=90)
    for gray in (False, True):
        shape = subprocess.run([str(opencv_program), str(cmyk), "0", "0", str(int(gray)), str(tmp_path / "o.raw")],
                               capture_output=True, text=True, check=True)
        expected = np.fromfile(tmp_path / "o.raw", np.uint8).reshape([int(v) for v in shape.stdout.split()])
        worst[("cmyk", gray)] = int(np.abs(read_image(cmyk, gray=gray).astype(int) - expected).max())
    # 16-bit PNGs: OpenCV keeps the high byte (Pillow's own conversion would clip grey ones at 255)
    deep = {"png16-gray": rng.integers(0, 65536, (33, 47), dtype=np.uint16)}
    Image.fromarray(deep["png16-gray"]).save(tmp_path / "png16-gray.png")
    cv2 = images.opencv()
    if cv2 is not None:
        cv2.imwrite(str(tmp_path / "png16-bgr.png"), rng.integers(0, 65536, (21, 30, 3), dtype=np.uint16))
    for name in ("png16-gray", "png16-bgr"):
        path = tmp_path / f"{name}.png"
        for gray in (False, True) if path.exists() else ():
            shape = subprocess.run([str(opencv_program), str(path), "0", "0", str(int(gray)), str(tmp_path / "o.raw")],
                                   capture_output=True, text=True, check=True)
            expected = np.fromfile(tmp_path / "o.raw", np.uint8).reshape([int(v) for v in shape.stdout.split()])
            worst[(name, gray)] = int(np.abs(read_image(path, gray=gray).astype(int) - expected).max())
    print("max abs difference to OpenCV (imread + resize):", worst)
    # known: libpng computes a 16-bit colour PNG's grey on the 16-bit values, Pillow hands us 8-bit ones: off by 1
    assert worst.pop(("png16-bgr", True), 0) <= 1
    assert set(worst.values()) == {0}, worst
