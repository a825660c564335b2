"""Per-layer goldens: one small net per case, run by real Caffe (pycaffe, CPU) and by our engine, compared.

A case (`Case`) is a few layers fed by Input blobs of given shapes and kinds. For each case, Caffe builds the net
(`force_backward: true` unless the case says otherwise), its parameter blobs are set to seeded random values (or
left to Caffe's fillers), it runs forward, every net output that is not a loss gets a seeded random top diff (a
loss output keeps its loss weight, as Caffe sets it), and it runs backward. The golden arrays, in
tests/golden/layers/<family>.npz, keyed "<case>/<what>/<name>":

    meta/prototxt        the net text as Caffe read it (a stale golden is one whose text differs from the case's)
    meta/phase           TRAIN or TEST
    input/<blob>         the inputs
    param/<layer>/<i>    parameter blobs before forward (what both sides start from)
    blob/<blob>          every blob after forward (in-place blobs hold the last value; Caffe's split blobs skipped)
    topdiff/<blob>       the random top diffs given to the non-loss outputs
    inputdiff/<blob>     the inputs' diffs after backward (zeros where Caffe does not backpropagate)
    grad/<layer>/<i>     parameter diffs after backward
    after/<layer>/<i>    parameter blobs after forward+backward, where they changed (BatchNorm's statistics)

The cases live in tests/golden/layers/cases_<family>.py as `CASES = [Case(...), ...]`; make_golden_layers.py
writes the goldens; tests/test_engine_layer_goldens.py compares (committed goldens, and live where Caffe is built).
Both sides run a case in tests/golden/layers/, so a file a layer reads (an InfogainLoss `source`) is named there
relative to that folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LAYERS_DIR = HERE / "layers"
SEED = 1701
RTOL = 1e-4


@dataclasses.dataclass
class Case:
    """One golden: `layers` (prototxt text) fed by `inputs` {blob: (shape, kind)}.

    kind: "normal" (std 1), "uniform:a:b", "positive" (uniform 0.5..2), "labels:K" (integers 0..K-1, as floats),
    "int:a:b" (integers a..b-1), "binary" (0 or 1), "cont:T" (a recurrent layer's sequence-continuation
    indicators for T time steps: 0 at t=0 and at a few random later steps, else 1), "spread:a:b" (a random
    permutation of evenly spaced values in a..b: no ties, for max/argmax layers).
    params: "random" (every parameter blob set to normal values; `param_kinds` {layer: [kind per blob]} overrides
    per blob) or "filler" (Caffe's fillers, seeded); a blob shared by name (`param { name }`) is drawn once, by
    its owner. phase: the net's phase. rtol: the tolerance (1e-4 unless a case documents why not).
    force_backward: False for layers real Caffe aborts on under force_backward (ArgMax,
    Accuracy and Threshold have no Backward; Embed, Filter, BatchReindex refuse to backpropagate to their index bottom, and
    an InfogainLoss to its matrix bottom, which force_backward turns on): then, as in Caffe, only loss tops (a
    `loss_weight`) drive the backward, through learnable blobs (e.g. a Parameter layer's), no random top diffs are
    drawn and the inputs get no diffs; propagate_down false is then not overridden."""
    name: str
    layers: str
    inputs: dict[str, tuple[tuple[int, ...], str]] = dataclasses.field(default_factory=dict)
    phase: str = "TRAIN"
    params: str = "random"
    param_kinds: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    rtol: float = RTOL
    force_backward: bool = True

    def prototxt(self) -> str:
        text = f'name: "{self.name}"\n' + ("force_backward: true\n" if self.force_backward else "")
        for blob, (shape, _) in self.inputs.items():
            dims = " ".join(f"dim: {d}" for d in shape)
            text += f'layer {{ name: "input_{blob}" type: "Input" top: "{blob}" input_param {{ shape {{ {dims} }} }} }}\n'
        return text + self.layers.strip() + "\n"

    def rng(self, salt: str = "") -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(f"{self.name}/{salt}".encode()))


def draw(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    """Values of `kind` (see Case) and `shape`, float32."""
    name, _, rest = kind.partition(":")
    args = [float(a) for a in rest.split(":")] if rest else []
    shape = tuple(shape)
    if name == "normal":
        values = rng.standard_normal(shape)
    elif name == "uniform":
        values = rng.uniform(args[0], args[1], shape)
    elif name == "positive":
        values = rng.uniform(0.5, 2.0, shape)
    elif name == "labels":
        values = rng.integers(0, int(args[0]), shape)
    elif name == "int":
        values = rng.integers(int(args[0]), int(args[1]), shape)
    elif name == "binary":
        values = rng.integers(0, 2, shape)
    elif name == "cont":
        values = (rng.uniform(size=shape) > 0.2).astype(float)
        values.reshape(int(args[0]), -1)[0] = 0
    elif name == "spread":
        count = int(np.prod(shape))
        values = rng.permutation(np.linspace(args[0], args[1], count)).reshape(shape)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return np.asarray(values, dtype=np.float32)


def load_cases(family: str | None = None) -> dict[str, list[Case]]:
    """{family: cases} from tests/golden/layers/cases_<family>.py (all families, or one)."""
    found = {}
    for path in sorted(LAYERS_DIR.glob("cases_*.py")):
        name = path.stem[len("cases_"):]
        if family not in (None, name):
            continue
        spec = importlib.util.spec_from_file_location(f"layer_cases_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names = [case.name for case in module.CASES]
        assert len(set(names)) == len(names), f"{path}: two cases share a name"
        found[name] = module.CASES
    return found


# ---------------------------------------------------------------- Caffe's side

def _skip_blob(name: str) -> bool:
    return "_split_" in name


def run_caffe_case(caffe, case: Case, folder: Path) -> dict[str, np.ndarray]:
    """The golden arrays of `case` (keys without the case prefix), computed by pycaffe."""
    proto = Path(folder).resolve() / f"{case.name}.prototxt"
    proto.write_text(case.prototxt())
    caffe.set_random_seed(SEED)
    with contextlib.chdir(LAYERS_DIR):
        net = caffe.Net(str(proto), caffe.TRAIN if case.phase == "TRAIN" else caffe.TEST)
    golden = {"meta/prototxt": np.array(case.prototxt()), "meta/phase": np.array(case.phase)}
    rng = case.rng("inputs")
    for blob, (shape, kind) in case.inputs.items():
        value = draw(kind, shape, rng)
        net.blobs[blob].data[...] = value
        golden[f"input/{blob}"] = value
    rng = case.rng("params")
    drawn = []
    for layer, blobs in net.params.items():
        kinds = case.param_kinds.get(layer, [])
        for i, blob in enumerate(blobs):
            shared = any(np.shares_memory(blob.data, other) for other in drawn)
            if case.params == "random" and not shared:
                blob.data[...] = draw(kinds[i] if i < len(kinds) else "normal", blob.data.shape, rng)
            drawn.append(blob.data)
            golden[f"param/{layer}/{i}"] = blob.data.copy()
    net.clear_param_diffs()
    net._forward(0, len(net.layers) - 1)
    for name, blob in net.blobs.items():
        if not _skip_blob(name):
            golden[f"blob/{name}"] = blob.data.copy()
    rng = case.rng("topdiff")
    weights = net.blob_loss_weights
    for name in net.outputs if case.force_backward else ():
        if not weights.get(name):
            diff = draw("normal", net.blobs[name].diff.shape, rng)
            net.blobs[name].diff[...] = diff
            golden[f"topdiff/{name}"] = diff
    net._backward(len(net.layers) - 1, 0)
    for blob in case.inputs:
        golden[f"inputdiff/{blob}"] = net.blobs[blob].diff.copy()
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            golden[f"grad/{layer}/{i}"] = blob.diff.copy()
            if not np.array_equal(blob.data, golden[f"param/{layer}/{i}"]):
                golden[f"after/{layer}/{i}"] = blob.data.copy()
    return golden


# ---------------------------------------------------------------- the engine's side

def relative_error(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| (0 when both are zero): relative to the blob's scale."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.size == theirs.size, (ours.shape, theirs.shape)
    if not theirs.size:
        return 0.0
    diff = np.abs(ours.reshape(theirs.shape) - theirs).max()
    return 0.0 if diff == 0 else float(diff / max(np.abs(theirs).max(), 1e-30))


def split_golden(arrays: dict, case: str) -> dict[str, np.ndarray]:
    """The arrays of one case from a family's npz (prefix removed)."""
    prefix = f"{case}/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def run_engine_case(case: Case, golden: dict[str, np.ndarray], device: str = "cpu") -> dict[str, float]:
    """Run `case` in our engine from the golden's inputs and parameters; return {key: relative error} for every
    blob, input diff, parameter diff and changed parameter the golden holds (all of them must be compared)."""
    import torch
    from convnet_transfer.formats.protoio import parse_text, pb
    from convnet_transfer.training.engine import Net

    assert str(golden["meta/prototxt"]) == case.prototxt(), f"{case.name}: golden is stale; rerun make_golden_layers.py"
    with contextlib.chdir(LAYERS_DIR):
        net = Net(parse_text(case.prototxt(), pb.NetParameter()), case.phase, seed=0)
    shared = {}
    for key, value in golden.items():
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            tensor = net.layer(layer).blobs[int(i)]
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(value).reshape(tensor.shape))
            shared[key] = tensor
    net.to(device)
    inputs = {}
    for blob in case.inputs:
        value = torch.from_numpy(golden[f"input/{blob}"]).to(device)
        kind = case.inputs[blob][1]
        differentiable = kind.split(":")[0] in ("normal", "uniform", "positive", "spread")
        inputs[blob] = value.requires_grad_(case.force_backward and differentiable)
    blobs = net(dict(inputs))
    errors = {}
    for key, theirs in golden.items():
        if key.startswith("blob/"):
            name = key[len("blob/"):]
            assert name in blobs, f"{case.name}: Caffe has blob {name}, the engine does not"
            errors[key] = relative_error(blobs[name].detach().cpu().numpy(), theirs)
    objective = net.loss(blobs)
    for key, diff in golden.items():
        if key.startswith("topdiff/"):
            objective = objective + (blobs[key[len("topdiff/"):]] * torch.from_numpy(diff).to(device)).sum()
    if objective.requires_grad:
        objective.backward()
    for key, theirs in golden.items():
        kind, _, rest = key.partition("/")
        if kind == "inputdiff":
            grad = inputs[rest].grad
            errors[key] = relative_error(np.zeros_like(theirs) if grad is None else grad.cpu().numpy(), theirs)
        elif kind == "grad":
            _, layer, i = key.split("/")
            grad = net.layer(layer).blobs[int(i)].grad
            errors[key] = relative_error(np.zeros_like(theirs) if grad is None else grad.cpu().numpy(), theirs)
        elif kind == "after":
            _, layer, i = key.split("/")
            errors[key] = relative_error(net.layer(layer).blobs[int(i)].detach().cpu().numpy(), theirs)
    return errors
