"""Net directories from the catalog and the Jinja templates in templates/.

For each net of a catalog (catalog.py) and an architecture (architectures/), `render_experiment` writes

    <out>/<net>/<stem>solver.prototxt, <stem>train.prototxt, <stem>val.prototxt   (from templates/)
    <out>/<net>/train.sh                                       (templates/train.sh.j2)
    <out>/<net>/basenet -> ../<base net>                       (transfer and selffer nets)
    <out>/<net>/<stem>train_<backend> -> <data>/<split>_train/<backend>
    <out>/<net>/<stem>val_<backend>   -> <data>/<val split>_valid/<backend>
    <out>/<net>/<stem>mean.binaryproto -> <data>/<split>_train/mean.binaryproto
    <out>/nets.json

(`<stem>` is "imagenet_" for CaffeNet, as in 2014.) It writes only these files, each atomically and only
when its content changes; snapshots, solver states and logs in a net directory are never touched. (Before it
changes the prototxts of a net trained before train.sh recorded its settings, it records them in the net's
trained_with.txt, tree.RECORD: train.sh then refuses to mix the old snapshots with the new settings.)

The transfer protocol on the layers of an architecture (net_layers), split point n counting transferable units
(Architecture.units: a layer, or a residual block with its BatchNorm, Scale, shortcut and join):
  - the layers of the first n units keep their names, so `caffe train -weights basenet/...` copies them;
    frozen nets set their lr_mult and decay_mult to 0 and their BatchNorm layers to `use_global_stats: true`
    (the base net's statistics, kept as they are); fine-tuned (+) nets keep them as the base net has them;
  - every later layer with weights (BatchNorm statistics count) is renamed `<name>-new` (its output blob too),
    so it starts from its filler;
  - nolearn nets freeze their first n units with no base net (random features; their BatchNorm layers, having
    no statistics to keep, still compute them);
  - the val net has neither fillers nor learning rates (as in 2014).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import jinja2
from google.protobuf import text_encoding

from . import architectures, catalog as catalog_mod, tree
from convnet_transfer.data import layout
from convnet_transfer.data.stores import BACKENDS   # the database kinds a net can read (gen_nets --backend)
from convnet_transfer.formats import legacy, protoio, snapshots
from convnet_transfer import resources
from .architectures.spec import Architecture, Enum, Layer
from .catalog import Catalog, NetSpec

__all__ = ["RenderOptions", "RenderReport", "NetgenError", "net_layers", "solver_fields", "net_files",
           "render_experiment", "render_catalog_json", "render_template", "shell_word", "one_line", "FORMATS",
           "BACKENDS"]

FORMATS = ("current", "2014")
ITERATION_FIELDS = ("test_iter", "test_interval", "display", "max_iter", "stepsize", "snapshot")


class NetgenError(ValueError):
    """Bad input to the generator (unknown net, template error, a foreign file in the way): says what to do."""


@dataclass
class RenderOptions:
    """How to render: the format, database backend, solver mode and the solver/batch overrides."""
    format: str = "current"                 # "current" or "2014"
    backend: str | None = None              # default: lmdb (current), leveldb (2014, the only one it knows)
    mode: str | None = None                 # "gpu" / "cpu"; default: the architecture's
    batch_size: int | None = None           # train batch; the val batch too when val_batch_size is None
    val_batch_size: int | None = None
    n_classes: int | dict | None = None     # classifier outputs, or {split: outputs}; default: the architecture's
                                            # (1000 for caffenet, even on the 500-class halves, as in 2014)
    scale: float | None = None              # multiply every iteration count (max_iter, stepsize, ...) by this
    solver: dict = field(default_factory=dict)   # solver fields set after scaling (max_iter=..., base_lr=...)

    def check(self) -> "RenderOptions":
        if self.format not in FORMATS:
            raise NetgenError(f"unknown format {self.format!r}; use one of {', '.join(FORMATS)}")
        if self.backend is None:
            self.backend = "leveldb" if self.format == "2014" else "lmdb"
        if self.backend not in BACKENDS:
            raise NetgenError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.format == "2014" and self.backend != "leveldb":
            raise NetgenError("the 2014 format knows only LevelDB databases; use --backend leveldb or "
                              "--format current")
        if self.mode not in (None, "gpu", "cpu"):
            raise NetgenError(f"unknown mode {self.mode!r}; use gpu or cpu")
        if self.scale is not None and self.scale <= 0:
            raise NetgenError(f"--scale must be positive, not {self.scale}")
        return self


@dataclass
class RenderReport:
    created: list[str] = field(default_factory=list)     # paths relative to the output root
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    nets: list[str] = field(default_factory=list)
    missing_data: list[str] = field(default_factory=list)   # data the links point at that does not exist yet

    def summary(self) -> str:
        text = (f"{len(self.nets)} nets: {len(self.created)} files created, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged")
        if self.missing_data:
            text += (f"; {len(self.missing_data)} databases/mean files they link to do not exist yet "
                     f"(e.g. {self.missing_data[0]}): make them with tools/make_dbs")
        return text


# ---------------------------------------------------------------- the protocol on layers

def net_layers(net: NetSpec, arch: Architecture, phase: str, n_classes: int | dict | None = None) -> list[Layer]:
    """The layers (after the data layer) of `net`'s train or val net: renamed, frozen and sized as the
    protocol says. n_classes: the classifier's outputs, or {split: outputs} (default: the architecture's)."""
    if phase not in ("train", "val"):
        raise ValueError(f"phase is train or val, not {phase!r}")
    n = net.n or 0
    if n > len(arch.transferable):
        raise NetgenError(f"net {net.name}: split point n={n}, but architecture {arch.name} has only "
                          f"{len(arch.transferable)} transferable units ({', '.join(arch.transferable)})")
    units = arch.units()
    copied = {name for unit in units[:n] for name in unit}
    frozen = {name for unit in units[:net.frozen] for name in unit}
    layers = [layer.copy() for layer in arch.layers if layer.phase in (None, phase)]
    blobs = {}                              # blob renames: a renamed layer's outputs get "-new" too
    for layer in layers:
        layer.bottom = [blobs.get(b, b) for b in layer.bottom]
        if net.renamed and layer.learnable and layer.name not in copied:
            blobs.update({t: f"{t}-new" for t in layer.top})
            layer.name = f"{layer.name}-new"
        layer.top = [blobs.get(t, t) for t in layer.top]
        if layer.name in frozen:
            layer.lr_mult = (0,) * len(layer.lr_mult)
            layer.decay_mult = (0,) * len(layer.decay_mult)
            if net.renamed and layer.type == "BatchNorm":   # copied and frozen: the base net's statistics stay
                layer.params.setdefault("batch_norm_param", {})["use_global_stats"] = True
    classifier = arch.classifier + ("-new" if net.renamed else "")
    if isinstance(n_classes, dict):
        n_classes = n_classes.get(net.split)
    outputs = n_classes or arch.n_classes
    for layer in layers:
        if layer.name == classifier:
            for group in layer.params.values():
                if "num_output" in group:
                    group["num_output"] = outputs
        if phase == "val":                  # the val net only runs forward: no fillers, no learning rates
            layer.lr_mult, layer.decay_mult = (), ()
            for group in layer.params.values():
                for filler in ("weight_filler", "bias_filler", "filler"):   # `filler`: Scale's, PReLU's
                    group.pop(filler, None)
            layer.params = {k: v for k, v in layer.params.items() if v}
    return layers


def solver_fields(net: NetSpec, arch: Architecture, options: RenderOptions) -> dict:
    """The solver's fields other than the net files, snapshot prefix and mode: the architecture's, the net's
    own (the reduced nets' schedule), scaled by options.scale, then options.solver."""
    fields = dict(arch.solver)
    fields.update(net.solver)
    if options.scale is not None:
        for key in ITERATION_FIELDS:
            if key in fields:
                fields[key] = max(1, int(round(fields[key] * options.scale)))
    unknown = set(options.solver) - set(_SOLVER_FIELD_NAMES)
    if unknown:
        raise NetgenError(f"unknown solver field(s) {', '.join(sorted(unknown))}; see SolverParameter in "
                          f"convnet_transfer/formats/proto/caffe.proto")
    fields.update({k: v for k, v in options.solver.items() if v is not None})
    if "max_iter" not in fields:
        raise NetgenError(f"net {net.name}: the solver has no max_iter (architecture {arch.name}); "
                          f"give one (--max-iter, or solver={{'max_iter': ...}})")
    return fields


def _solver_field_names() -> list[str]:
    from convnet_transfer.formats.protoio import pb
    return [f.name for f in pb.SolverParameter.DESCRIPTOR.fields]


_SOLVER_FIELD_NAMES = _solver_field_names()


@dataclass(frozen=True)
class NetFiles:
    """The names of a net directory's files (relative to it)."""
    solver: str
    train: str
    val: str
    train_db: str
    val_db: str
    mean: str


def net_files(arch: Architecture, backend: str) -> NetFiles:
    s = arch.file_stem
    return NetFiles(f"{s}solver.prototxt", f"{s}train.prototxt", f"{s}val.prototxt",
                    f"{s}train_{backend}", f"{s}val_{backend}", f"{s}mean.binaryproto")


# ---------------------------------------------------------------- templates

def _pb(value) -> str:
    """A Python value as a prototxt scalar."""
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):   # protobuf's text escapes (\" \\ \n, UTF-8 bytes as \ooo): every parser reads them
        return '"' + text_encoding.CEscape(value.encode("utf-8"), as_utf8=False) + '"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".9g")
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) in a prototxt")


def one_line(value) -> str:
    """`value` as text on one line of a generated script (a shell word, a #SBATCH line, a make rule): a line break
    would start a new line of commands there, so it is refused (NetgenError naming the value). Comment lines take
    comment_text instead."""
    text = str(value)
    if "\n" in text:
        raise NetgenError(f"{text!r}: a line break cannot be written into a generated script (train.sh, "
                          f"local/run_net.sh, local/Makefile, the Slurm job scripts); rename it without one")
    return text


def shell_word(value) -> str:
    """`value` as one word of a shell script, on one line (shlex.quote: as it is when it is plain, else in single
    quotes). The `sh` filter: every path and name a template writes into a script goes through it."""
    return shlex.quote(one_line(value))


def comment_text(value) -> str:
    """`value` for a comment line (`# ...` in a prototxt or train.sh): line breaks become spaces, so that nothing
    of it leaves the comment. The `comment` filter."""
    return " ".join(str(value).splitlines())


def _fail(message: str):
    raise NetgenError(message)


def _environment(templates: str | os.PathLike | None) -> jinja2.Environment:
    """The Jinja environment of every template (nets, train.sh, the local runner's and Slurm's scripts)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates or resources.templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["pb"] = _pb
    env.filters["sh"] = shell_word
    env.filters["comment"] = comment_text
    env.globals["fail"] = _fail
    env.globals["snapshot"] = snapshots.TEMPLATE      # the snapshot name rule: {{ snapshot.infix }}, ...
    env.globals["record"] = tree.RECORD               # the settings a net was trained with: {{ record }}
    return env


def _render(env: jinja2.Environment, template: str, **context) -> str:
    try:
        return env.get_template(template).render(**context)
    except jinja2.TemplateNotFound as err:
        raise NetgenError(f"template {err.name} not found in {env.loader.searchpath[0]}: reinstall the package "
                          f"or point --templates at a folder holding it") from None
    except jinja2.UndefinedError as err:
        raise NetgenError(f"template {template}: {err}; the variables it may use are: "
                          f"{', '.join(sorted(context))}") from None
    except jinja2.TemplateSyntaxError as err:
        raise NetgenError(f"template {err.filename or template}:{err.lineno}: {err.message}") from None


def render_template(folder: str | os.PathLike, template: str, **context) -> str:
    """`template` of `folder` rendered as gen_nets renders its own (the `sh` filter quotes a shell word; the
    runners' scripts in templates/slurm/); NetgenError on a template error or a value no script can carry."""
    return _render(_environment(folder), template, **context)


# ---------------------------------------------------------------- writing, without losing anything

def _write_file(path: Path, text: str, mode: int, root: Path, report: RenderReport) -> None:
    rel = str(path.relative_to(root))
    data = text.encode()
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise NetgenError(f"{path} is in the way (a link or folder where gen_nets writes a file); "
                          f"move it away and run again")
    if path.is_file():
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == protoio.file_mode(mode):
            report.unchanged.append(rel)
            return
        report.updated.append(rel)
    else:
        report.created.append(rel)
    protoio.atomic_write_bytes(path, data, mode, durable=False)   # the old file or the new one, never half of either


def _write_link(path: Path, target: str, root: Path, report: RenderReport) -> None:
    rel = str(path.relative_to(root))
    if path.is_symlink():
        if os.readlink(path) == target:
            report.unchanged.append(rel)
            return
        report.updated.append(rel)
    elif path.exists():
        raise NetgenError(f"{path} is a real file or folder where gen_nets makes a link (to {target}); "
                          f"move it away and run again")
    else:
        report.created.append(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.link-part")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _link_target(target: Path, net_dir: Path) -> str:
    """Relative links when the data root was given relative (the 2014 layout: ../../ilsvrc12/data/...)."""
    if target.is_absolute():
        return str(target)
    return os.path.relpath(os.path.abspath(target), os.path.abspath(net_dir))


# ---------------------------------------------------------------- the whole experiment

def render_experiment(catalog: Catalog | None = None, out_root: str | os.PathLike = "generated",
                      data_root: str | os.PathLike = "ilsvrc12/data", *, arch: str | Architecture = "caffenet",
                      options: RenderOptions | None = None, only: str | Iterable[str] | None = None,
                      templates: str | os.PathLike | None = None, progress: bool = False,
                      **option_fields) -> RenderReport:
    """Render every net of `catalog` (default: the paper's 170) selected by `only` (globs on names) into
    `out_root`, with databases under `data_root`. Options come as a RenderOptions or as its fields
    (format="current", backend=..., mode=..., batch_size=..., n_classes=..., scale=..., solver={...}).
    Returns what changed. Raises NetgenError (clear message) on an unknown net or a template error."""
    catalog = catalog_mod.paper_catalog() if catalog is None else catalog
    if options is None:
        options = RenderOptions(**option_fields)
    elif option_fields:
        raise TypeError("give either options= or option fields, not both")
    options.check()
    try:
        arch = architectures.get(arch)
    except (KeyError, ValueError) as err:
        raise NetgenError(str(err.args[0])) from None
    try:
        selected = catalog.select(only)
    except KeyError as err:
        raise NetgenError(str(err)) from None
    out_root, data_root = Path(out_root), Path(data_root)
    # the nets listed before, read (and a damaged list refused) before anything is written
    try:
        listed = tree.read_nets_json(out_root / tree.NETS_JSON) if (out_root / tree.NETS_JSON).is_file() else None
    except tree.TreeError as err:
        raise NetgenError(str(err)) from None
    env = _environment(templates)
    report = RenderReport()
    nets = selected
    if progress:
        from tqdm import tqdm
        nets = tqdm(selected, desc="gen_nets", unit="net")
    for net in nets:
        _render_net(net, catalog, arch, options, out_root, data_root, env, report)
        report.nets.append(net.name)
    out_root.mkdir(parents=True, exist_ok=True)
    _write_file(out_root / tree.NETS_JSON, tree.nets_json_text(render_catalog_json(selected, arch, options), listed),
                0o644, out_root, report)
    return report


def _render_net(net: NetSpec, catalog: Catalog, arch: Architecture, options: RenderOptions, out_root: Path,
                data_root: Path, env: jinja2.Environment, report: RenderReport) -> None:
    net_dir = out_root / net.name
    files = net_files(arch, options.backend)
    texts = {}                                  # rendered first, written after: a template error writes nothing
    mode = options.mode or arch.mode
    header = comment_text(f"{net.name}: {net.describe()}; architecture {arch.name}")   # a comment line in each file
    for phase, name in (("train", files.train), ("val", files.val)):
        batch = options.batch_size or arch.batch_size
        if phase == "val":
            batch = options.val_batch_size or options.batch_size or arch.val_batch_size
        data = dict(source=files.train_db if phase == "train" else files.val_db, backend=options.backend,
                    batch_size=batch, mean_file=files.mean, crop_size=arch.crop_size,
                    mirror=arch.mirror if phase == "train" else False, scale=arch.scale)
        v0_names = {"v0": legacy.v0_writing_tables()} if options.format == "2014" else {}
        text = _render(env, f"{options.format}/net.prototxt.j2", net_name=arch.net_name, phase=phase, data=data,
                       layers=net_layers(net, arch, phase, options.n_classes), header=header,
                       padding_layers=net.padding_layers, **v0_names)
        texts[name] = (text, 0o644)
    solver = solver_fields(net, arch, options)
    text = _render(env, f"{options.format}/solver.prototxt.j2", solver=solver, train_net=files.train,
                   test_net=files.val, mode=mode, snapshot_prefix=arch.snapshot_prefix, header=header)
    texts[files.solver] = (text, 0o644)
    base = catalog[net.base] if net.base else None
    text = _render(env, "train.sh.j2", name=net.name, description=net.describe(), arch=arch.name,
                   solver_file=files.solver, prototxts=[files.solver, files.train, files.val],
                   snapshot_prefix=arch.snapshot_prefix, max_iter=solver["max_iter"],
                   base=net.base, base_prefix=arch.snapshot_prefix,
                   base_max_iter=solver_fields(base, arch, options)["max_iter"] if base else None)
    texts["train.sh"] = (text, 0o755)
    prototxts = [files.solver, files.train, files.val]
    if any((net_dir / name).is_file() and (net_dir / name).read_text() != texts[name][0] for name in prototxts):
        tree.record_settings(net_dir, prototxts)   # a net trained before records were kept: as it was trained
    for name, (text, file_mode) in texts.items():
        _write_file(net_dir / name, text, file_mode, out_root, report)
    if base:
        _write_link(net_dir / "basenet", f"../{base.name}", out_root, report)
    train = data_root / layout.list_folder(net.split, "train")
    val = data_root / layout.list_folder(net.val_split, "valid")
    links = {files.train_db: train / options.backend, files.val_db: val / options.backend,
             files.mean: train / layout.MEAN}
    for name, target in links.items():
        _write_link(net_dir / name, _link_target(target, net_dir), out_root, report)
        if not target.exists() and str(target) not in report.missing_data:
            report.missing_data.append(str(target))


def render_catalog_json(catalog: Catalog, arch: Architecture, options: RenderOptions) -> list[dict]:
    """The nets.json entries (docs/nets.md): the catalog's fields plus the directory and its files."""
    files = net_files(arch, options.backend)
    return [{**net.as_json(), "dir": net.name, "solver": files.solver, "train_sh": "train.sh",
             "description": net.describe()} for net in catalog]
