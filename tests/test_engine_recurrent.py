"""RNN and LSTM across forwards, against real Caffe (the per-layer goldens run one forward only): without
expose_hidden, each forward starts from the previous forward's final state (Caffe copies h_T, c_T into h_0, c_0),
also when the batch shrinks (the first values of the old state) or grows past it (zeros: Caffe's Blob reuse); a
cont of 0 at t = 0 starts a stream afresh."""
import subprocess
import sys

import numpy as np
import torch

from convnet_transfer.formats.protoio import parse_text, pb
from convnet_transfer.training.engine import Net

T, D, H = 2, 3, 4
BATCHES = [2, 2, 1, 2, 3, 3]      # N per forward
PROTOTXT = f"""name: "recurrent_state"
layer {{ name: "input" type: "Input" top: "x" top: "cont"
        input_param {{ shape {{ dim: {T} dim: 2 dim: {D} }} shape {{ dim: {T} dim: 2 }} }} }}
layer {{ name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "rnn" recurrent_param {{ num_output: {H} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "lstm" recurrent_param {{ num_output: {H} }} }}
"""

CAFFE_SCRIPT = """
import sys
import numpy as np
from convnet_transfer.training.realcaffe import find_caffe
caffe = find_caffe().import_pycaffe()
caffe.set_mode_cpu()
proto, out, batches = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3].split(",")]
net = caffe.Net(proto, caffe.TEST)
rng = np.random.default_rng(7)
arrays = {}
for layer, blobs in net.params.items():
    for i, blob in enumerate(blobs):
        blob.data[...] = rng.uniform(-0.7, 0.7, blob.data.shape)
        arrays[f"param/{layer}/{i}"] = blob.data.copy()
for step, n in enumerate(batches):
    x = rng.uniform(-1, 1, (net.blobs["x"].shape[0], n, net.blobs["x"].shape[2]))
    cont = (rng.uniform(size=(x.shape[0], n)) > 0.2).astype(float)
    cont[0, 0] = 1                                   # stream 0 always continues from the last forward
    net.blobs["x"].reshape(*x.shape)
    net.blobs["cont"].reshape(*cont.shape)
    net.blobs["x"].data[...] = x
    net.blobs["cont"].data[...] = cont
    net.forward()
    arrays.update({f"{step}/x": x, f"{step}/cont": cont, f"{step}/rnn": net.blobs["rnn"].data.copy(),
                   f"{step}/lstm": net.blobs["lstm"].data.copy()})
np.savez(out, **arrays)
"""


def test_state_carries_across_forwards_as_in_caffe(real_caffe, tmp_path):
    (tmp_path / "net.prototxt").write_text(PROTOTXT)
    env = real_caffe.env()
    env["GLOG_minloglevel"] = "2"
    result = subprocess.run([sys.executable, "-c", CAFFE_SCRIPT, str(tmp_path / "net.prototxt"),
                             str(tmp_path / "caffe.npz"), ",".join(map(str, BATCHES))],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    caffe = dict(np.load(tmp_path / "caffe.npz"))
    net = Net(parse_text(PROTOTXT, pb.NetParameter()), "TEST", seed=0)
    with torch.no_grad():
        for key, value in caffe.items():
            if key.startswith("param/"):
                _, layer, i = key.split("/")
                net.layer(layer).blobs[int(i)].copy_(torch.from_numpy(value))
        for step in range(len(BATCHES)):
            inputs = {k: torch.from_numpy(caffe[f"{step}/{k}"]).float() for k in ("x", "cont")}
            blobs = net(inputs)
            for top in ("rnn", "lstm"):
                theirs = caffe[f"{step}/{top}"]
                error = np.abs(blobs[top].numpy() - theirs).max() / np.abs(theirs).max()
                assert error < 1e-5, (step, top, error)
    # the comparison means something: a forward from zeros differs from Caffe's carried state
    fresh = Net(parse_text(PROTOTXT, pb.NetParameter()), "TEST", seed=0)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        last = len(BATCHES) - 1
        blobs = fresh({k: torch.from_numpy(caffe[f"{last}/{k}"]).float() for k in ("x", "cont")})
    assert not np.allclose(blobs["lstm"].numpy(), caffe[f"{last}/lstm"], atol=1e-4)
