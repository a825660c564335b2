"""tools/make_splits: whole-dataset image lists -> every split list of the experiment (stage 1)."""
from __future__ import annotations

from pathlib import Path

import click

from convnet_transfer.data import splits
from convnet_transfer.resources import ilsvrc12_dir

HELP = """Make the split lists of the transfer experiment from a dataset's whole image lists.

\b
Reads:  --train and/or --val: Caffe image lists, "<relative/path> <class index>" per line
        (for ILSVRC-2012, Caffe's data/ilsvrc12/get_ilsvrc_aux.sh gives train.txt and val.txt);
        --classes: the class list, one class per line in label order (first word = class id);
        default: the shipped ILSVRC-2012 list (1000 wnids, ilsvrc12/synsets.txt).
Writes: OUT/<split>_train/files.txt, idxmap.txt and OUT/<split>_valid/files.txt, idxmap.txt for
        whole, half{0..3}{A,B} (random halves), half<name>{A,B} (groupings: natman for ILSVRC-2012,
        --group for yours), reduced<NNNN> (train only); and OUT/md5sums.txt.

With the ILSVRC-2012 classes every list is checked against the md5 published in 2014
(ilsvrc12/md5sums_2014.txt) before anything is written; a mismatch stops with an error unless
--accept-new. Files are replaced atomically, and a re-run with the same inputs writes nothing.

\b
ILSVRC-2012, the 2014 lists:
  tools/make_splits --train train.txt --val val.txt --out data/ilsvrc12/data
Your dataset (10 classes, a grouping of your own):
  tools/make_splits --train train.txt --val val.txt --n-classes 10 --reduced 10,100,1000 \\
      --group upper=0,2,3,4,6/1,5,7,8,9 --out data/mine
"""


def _ints(text: str, what: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers (or 'none')", param_hint=what)


def _read_classes(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise click.BadParameter(f"cannot read {path}: {err}", param_hint="--classes")
    classes = [line.split()[0] for line in lines if line.strip()]
    if len(set(classes)) != len(classes):
        raise click.BadParameter(f"{path} lists a class twice", param_hint="--classes")
    return classes


def _parse_group(spec: str, classes: list[str] | None, n_classes: int) -> tuple[str, tuple[list[int], list[int]]]:
    """NAME=A[/B]: A and B comma-separated class indices or class ids; B defaults to every other class."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{spec!r}: expected NAME=A/B, e.g. upper=0,2,3,4,6/1,5,7,8,9", param_hint="--group")
    index = {c: i for i, c in enumerate(classes or [])}

    def one(text: str) -> list[int]:
        out = []
        for token in (t.strip() for t in text.split(",")):
            if token in index:
                out.append(index[token])
            elif token.isdigit():
                out.append(int(token))
            elif token:
                raise click.BadParameter(f"{spec!r}: {token!r} is neither a class index nor a class id of --classes",
                                         param_hint="--group")
        return out

    part_a, has_b, part_b = rest.partition("/")
    group_a = one(part_a)
    group_b = one(part_b) if has_b else [c for c in range(n_classes) if c not in set(group_a)]
    return name, (group_a, group_b)


def _natman_report(say) -> tuple[list[int], list[int]]:
    """The WordNet rule's grouping of the 1000 ILSVRC-2012 classes, compared with the 2014 one."""
    from convnet_transfer.data import wordnet
    wnids = splits.ilsvrc12_classes()
    grouping = wordnet.natman_from_wordnet(wnids)
    comparison = wordnet.compare_groupings(splits.imagenet_groups()["natman"], grouping)
    say(f"WordNet rule (man-made = under {wordnet.ARTIFACT} 'artifact, artefact'): {len(grouping[0])} natural, "
        f"{len(grouping[1])} man-made; 2014 grouping: 449 natural, 551 man-made")
    say(comparison.describe(wnids, splits.ilsvrc12_class_names(), ("natural", "man-made"), ("2014", "WordNet")))
    return grouping


@click.command(help=HELP)
@click.option("--train", "train_list", type=click.Path(path_type=Path), help="Whole train list (Caffe format).")
@click.option("--val", "val_list", type=click.Path(path_type=Path), help="Whole validation list (Caffe format).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Output folder (the data root, e.g. data/ilsvrc12/data).")
@click.option("--classes", "classes_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Class list, one per line in label order. Default: ILSVRC-2012 (ilsvrc12/synsets.txt).")
@click.option("--n-classes", type=int, help="Number of classes, for a dataset without a class list.")
@click.option("--seeds", default="0,1,2,3", show_default=True, help="Seeds of the random halves ('none': no halves).")
@click.option("--reduced", default=",".join(map(str, splits.REDUCED_2014)), show_default=True,
              help="Images per class of the reduced train lists ('none': no reduced lists).")
@click.option("--group", "group_specs", multiple=True, metavar="NAME=A[/B]",
              help="A grouping of your own -> halfNAMEA/B; A, B: comma-separated class indices or ids "
                   "(B defaults to the other classes). Repeatable.")
@click.option("--natman-from", type=click.Choice(["shipped", "wordnet", "none"]),
              help="Natural/man-made halves (halfnatmanA/B) from the 2014 grouping shipped in ilsvrc12/ "
                   "(default for ILSVRC-2012), or from WordNet 3.0 hypernyms (any wnid class list), or none "
                   "(default for other class lists).")
@click.option("--natman-report", is_flag=True,
              help="Only print how the WordNet rule compares with the 2014 natural/man-made grouping.")
@click.option("--manifest", "manifest", default=None,
              help="Published md5s to check against ('<md5>  <split>/files.txt' per line). Default: the 2014 "
                   "ones (ilsvrc12/md5sums_2014.txt) for ILSVRC-2012 classes; 'none' checks nothing.")
@click.option("--accept-new", is_flag=True, help="Keep lists whose md5 differs from the published one.")
@click.option("--short-classes", type=click.Choice(["error", "keep"]),
              help="A class with fewer train images than a reduced size: stop (error), or keep all its images "
                   "(keep, as the 2014 ILSVRC-2012 lists did: some classes have 732). Default: keep for "
                   "ILSVRC-2012, error otherwise.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(train_list, val_list, out_dir, classes_file, n_classes, seeds, reduced, group_specs, natman_from,
         natman_report, manifest, accept_new, short_classes, no_progress):
    if natman_report:
        _natman_report(click.echo)
        return
    say = lambda message: click.echo(message, err=True)  # noqa: E731  (stdout stays for --natman-report)
    if train_list is None and val_list is None:
        raise click.UsageError("give --train, --val, or both")
    if out_dir is None:
        raise click.UsageError("give --out, the folder to write the split lists to")

    classes, n_classes = _classes(classes_file, n_classes)
    is_ilsvrc = classes == splits.ilsvrc12_classes()
    natman_from = natman_from or ("shipped" if is_ilsvrc else "none")
    groups = _groupings(natman_from, is_ilsvrc, classes, n_classes, group_specs, say)
    published = _published(manifest, is_ilsvrc, natman_from, say)
    try:
        splits.make_splits(
            train_list, val_list, out_dir, n_classes=n_classes, seeds=_ints(seeds, "--seeds"), groups=groups,
            reduced=_ints(reduced, "--reduced"), published_md5=published, accept_new=accept_new,
            short_classes=short_classes or ("keep" if is_ilsvrc else "error"), progress=not no_progress, log=say)
    except splits.SplitError as err:
        raise click.ClickException(str(err))


def _classes(classes_file: Path | None, n_classes: int | None) -> tuple[list[str] | None, int]:
    """The class list (--classes, or the shipped ILSVRC-2012 one unless only --n-classes is given) and its size."""
    classes = None
    if n_classes is None or classes_file is not None:
        classes = _read_classes(classes_file or ilsvrc12_dir() / "synsets.txt")
        if n_classes is not None and n_classes != len(classes):
            raise click.BadParameter(f"{n_classes} classes, but {classes_file} lists {len(classes)}",
                                     param_hint="--n-classes")
        n_classes = len(classes)
    return classes, n_classes


def _groupings(natman_from: str, is_ilsvrc: bool, classes, n_classes: int, group_specs, say) -> dict:
    """{name: (classes A, classes B)}: the natural/man-made halves (--natman-from) and each --group."""
    groups = {}
    if natman_from == "shipped":
        if not is_ilsvrc:
            raise click.BadParameter("the shipped grouping is for the 1000 ILSVRC-2012 classes in Caffe's order; "
                                     "use --natman-from wordnet for other WordNet classes", param_hint="--natman-from")
        groups.update(splits.imagenet_groups())
    elif natman_from == "wordnet":
        from convnet_transfer.data import wordnet
        if not classes:
            raise click.BadParameter("needs a --classes list of WordNet ids (n01440764, ...)",
                                     param_hint="--natman-from")
        try:
            groups["natman"] = _natman_report(say) if is_ilsvrc else wordnet.natman_from_wordnet(classes)
        except wordnet.WordNetError as err:
            raise click.ClickException(str(err))
        if not is_ilsvrc:
            say(f"WordNet rule: {len(groups['natman'][0])} natural, {len(groups['natman'][1])} man-made classes")
    for spec in group_specs:
        name, grouping = _parse_group(spec, classes, n_classes)
        if name in groups:
            raise click.BadParameter(f"grouping {name!r} given twice", param_hint="--group")
        groups[name] = grouping
    return groups


def _published(manifest: str | None, is_ilsvrc: bool, natman_from: str, say) -> dict[str, str]:
    """The md5s to check the lists against: --manifest, or the 2014 ones for ILSVRC-2012 classes."""
    if manifest is None:
        published = splits.published_md5_2014() if is_ilsvrc else {}
        if is_ilsvrc and natman_from != "shipped":
            # a deliberate other grouping is not "another input": its lists have no published md5
            published = {k: v for k, v in published.items() if not k.startswith("halfnatman")}
            if natman_from == "wordnet":
                say("note: halfnatmanA/B from WordNet are not the 2014 lists; they are not checked")
        return published
    if manifest.lower() == "none":
        return {}
    try:
        return splits.read_manifest(manifest)
    except splits.SplitError as err:
        raise click.BadParameter(str(err), param_hint="--manifest")
