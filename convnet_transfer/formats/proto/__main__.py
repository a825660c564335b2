"""Regenerate caffe_pb2.py from caffe.proto with grpcio-tools' bundled protoc.

    python -m convnet_transfer.formats.proto          # rewrite convnet_transfer/formats/caffe_pb2.py
    python -m convnet_transfer.formats.proto --check  # exit 1 if the committed file is stale
"""
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("caffe.proto")
TARGET = Path(__file__).parent.parent / "caffe_pb2.py"


def generate() -> str:
    """Return the text protoc writes for caffe.proto (import path convnet_transfer/formats/caffe.proto)."""
    from grpc_tools import protoc  # only needed to regenerate, not at run time

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "convnet_transfer" / "formats"
        src.mkdir(parents=True)
        (src / "caffe.proto").write_text(PROTO.read_text())
        rc = protoc.main(["protoc", f"-I{tmp}", f"--python_out={tmp}", "convnet_transfer/formats/caffe.proto"])
        if rc != 0:
            raise SystemExit(f"protoc failed on {PROTO} (exit {rc})")
        return (src / "caffe_pb2.py").read_text()


def main(argv):
    text = generate()
    if "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python -m convnet_transfer.formats.proto", file=sys.stderr)
            return 1
        print(f"{TARGET} is up to date")
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
