"""Stage 1, split lists: the 2014 md5s, the split rules on synthetic ImageNet-layout lists, bad input, re-runs."""
import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convnet_transfer.data import lists, splits
from convnet_transfer.cli.make_splits import main as make_splits_cli

VALID_2014 = [f"half{s}{h}_valid/files.txt" for s in range(4) for h in "AB"] + \
             ["halfnatmanA_valid/files.txt", "halfnatmanB_valid/files.txt"]


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def quiet(_message):
    pass


def tree(folder: Path) -> dict:
    """Every file under folder (hidden ones too) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def synthetic_train(path: Path, counts, seed=0, wnids=None) -> list[tuple[str, int]]:
    """A train list in ImageNet's layout (nXXXXXXXX/nXXXXXXXX_N.JPEG label), classes interleaved at random."""
    wnids = wnids or [f"n{1440764 + 1000 * c:08d}" for c in range(len(counts))]
    items = [(f"{wnids[c]}/{wnids[c]}_{i + 1}.JPEG", c) for c, count in enumerate(counts) for i in range(count)]
    random.Random(seed).shuffle(items)
    path.write_text("".join(f"{p} {c}\n" for p, c in items))
    return items


# --- the 2014 release ----------------------------------------------------------------------------------------

def test_2014_validation_md5s_reproduced(reference, tmp_path):
    """All ten published half / natman validation md5s (and whole_valid) from the 2014 whole_valid list."""
    published = splits.read_manifest(reference / "ilsvrc12/data/md5sums.txt")   # the reference's, not our copy
    report = splits.make_splits(None, reference / "ilsvrc12/data/whole_valid/files.txt", tmp_path, n_classes=1000,
                                groups=splits.imagenet_groups(), published_md5=published, log=quiet)
    for name in VALID_2014 + ["whole_valid/files.txt"]:
        assert md5(tmp_path / name) == published[name], name
        assert report.md5[name] == published[name]
    assert sorted(report.checked) == sorted(VALID_2014 + ["whole_valid/files.txt"])
    assert not report.new and not report.unpublished
    # the manifest we write has the published lines, in the published order
    ours = (tmp_path / "md5sums.txt").read_text().splitlines()
    theirs = [line for line in (reference / "ilsvrc12/data/md5sums.txt").read_text().splitlines() if "_valid/" in line]
    assert ours == theirs
    # idxmaps: "orig new", ascending orig, new = 0..K-1
    natural = [int(x) for x in (reference / "ilsvrc12/data/half_nat_idx.txt").read_text().split()]
    pairs = [tuple(map(int, line.split())) for line in (tmp_path / "halfnatmanA_valid/idxmap.txt").read_text().splitlines()]
    assert pairs == [(orig, new) for new, orig in enumerate(natural)]


def test_shipped_facts_match_reference(reference):
    ref = reference / "ilsvrc12"
    assert splits.ilsvrc12_classes() == (ref / "synsets.txt").read_text().split()
    assert len(splits.ilsvrc12_class_names()) == 1000 and splits.ilsvrc12_class_names()[0] == "tench, Tinca tinca"
    natural, manmade = splits.imagenet_groups()["natman"]
    assert natural == [int(x) for x in (ref / "data/half_nat_idx.txt").read_text().split()]
    assert manmade == [int(x) for x in (ref / "data/half_man_idx.txt").read_text().split()]
    assert splits.published_md5_2014() == splits.read_manifest(ref / "data/md5sums.txt")


def test_shipped_groups_partition_the_classes():
    natural, manmade = splits.imagenet_groups()["natman"]
    assert (len(natural), len(manmade)) == (449, 551)
    assert sorted(natural + manmade) == list(range(1000))
    assert len(splits.published_md5_2014()) == 33


# --- the rules -------------------------------------------------------------------------------------------------

def test_random_halves():
    for n in (2, 10, 11, 1000):
        for seed in range(4):
            a, b = splits.random_halves(n, seed)
            assert len(a) == n // 2 and a == sorted(a) and b == sorted(b)
            assert sorted(a + b) == list(range(n))
    # Fashion-MNIST's halves (the legacy generator's stream is fixed: these never change)
    assert [splits.random_halves(10, s)[0] for s in range(4)] == \
        [[0, 1, 3, 7, 8], [2, 3, 6, 8, 9], [0, 1, 2, 4, 6], [0, 1, 3, 8, 9]]
    assert splits.random_halves(1000, 0) != splits.random_halves(1000, 1)


def test_synthetic_imagenet_train_list(tmp_path):
    counts = [7, 3, 12, 5, 9, 4]
    items = synthetic_train(tmp_path / "train.txt", counts)
    val = synthetic_train(tmp_path / "val.txt", [2] * 6, seed=1)
    out = tmp_path / "data"
    report = splits.make_splits(tmp_path / "train.txt", tmp_path / "val.txt", out, n_classes=6,
                                groups={"mine": ([0, 4], [1, 2, 5])}, reduced=(1, 2, 5), short_classes="keep",
                                log=quiet)

    def lines(name):
        return [(p, int(c)) for p, c in (line.rsplit(" ", 1) for line in (out / name).read_text().splitlines())]

    assert (out / "whole_train/files.txt").read_bytes() == (tmp_path / "train.txt").read_bytes()
    for seed in range(4):
        for half in splits.random_halves(6, seed):
            name = f"half{seed}{'A' if half == splits.random_halves(6, seed)[0] else 'B'}"
            new = {orig: i for i, orig in enumerate(half)}
            assert lines(f"{name}_train/files.txt") == [(p, new[c]) for p, c in items if c in new]
            assert (out / f"{name}_train/idxmap.txt").read_text() == "".join(f"{o} {n}\n" for o, n in new.items())
            assert (out / f"{name}_valid/idxmap.txt").read_text() == (out / f"{name}_train/idxmap.txt").read_text()
    assert lines("halfmineA_train/files.txt") == [(p, {0: 0, 4: 1}[c]) for p, c in items if c in (0, 4)]
    assert lines("halfmineB_train/files.txt") == [(p, {1: 0, 2: 1, 5: 2}[c]) for p, c in items if c in (1, 2, 5)]
    for n in (1, 2, 5):
        kept = lines(f"reduced{n:04d}_train/files.txt")
        # the first n lines of each class, in input order, labels unchanged
        assert kept == [(p, c) for i, (p, c) in enumerate(items) if [x[1] for x in items[:i]].count(c) < n]
        assert [sum(1 for _, c in kept if c == k) for k in range(6)] == [min(n, k) for k in counts]
        assert (out / f"reduced{n:04d}_train/idxmap.txt").read_text() == "".join(f"{c} {c}\n" for c in range(6))
        assert not (out / f"reduced{n:04d}_valid").exists()   # reduced nets are tested on whole_valid
    assert any("reduced0005_train: 2 classes have fewer than 5" in note for note in report.notes)
    # the manifest lists every files.txt, with its md5
    manifest = splits.read_manifest(out / "md5sums.txt")
    assert manifest == report.md5 and len(manifest) == 2 * 11 + 3
    assert all(md5(out / name) == value for name, value in manifest.items())
    assert not list(out.glob(".make_splits-*"))


def test_lists_given_in_memory_and_user_grouping(tmp_path):
    """Fashion-MNIST style: 10 classes, halves of 5, the upper-body garments grouping."""
    train = [(f"train/{i:05d}.png", i % 10) for i in range(60)]
    val = [(f"test/{i:05d}.png", (3 * i) % 10) for i in range(20)]
    upper = ([0, 2, 3, 4, 6], [1, 5, 7, 8, 9])
    report = splits.make_splits(train, val, tmp_path, n_classes=10, groups={"upper": upper}, reduced=(6,),
                                log=quiet)
    assert (tmp_path / "halfupperA_valid/files.txt").read_text().splitlines()[:2] == \
        ["test/00000.png 0", "test/00001.png 2"]   # classes 0, 3 -> 0, 2 (0,2,3,4,6 renumbered 0..4)
    assert len((tmp_path / "half0A_train/files.txt").read_text().splitlines()) == 30
    assert "reduced0006_train/files.txt" in report.md5 and "whole_valid/files.txt" in report.md5


# --- md5 checks --------------------------------------------------------------------------------------------------

def test_train_list_other_than_2014_is_reported(tmp_path, capsys):
    """A 1000-class train list that is not the 2014 one: its whole_train md5 differs, and that is said first."""
    synthetic_train(tmp_path / "train.txt", [2] * 1000)
    out = tmp_path / "data"
    with pytest.raises(splits.Md5MismatchError) as err:
        splits.make_splits(tmp_path / "train.txt", None, out, n_classes=1000, groups=splits.imagenet_groups(),
                           reduced=(1, 2), published_md5=splits.published_md5_2014())
    assert err.value.name == "whole_train/files.txt"
    assert err.value.expected == "3be8e5d8cbd932cc295ec175d5110921"
    assert err.value.actual == md5(tmp_path / "train.txt")
    assert "3be8e5d8cbd932cc295ec175d5110921" in str(err.value) and "--accept-new" in str(err.value)
    assert not out.exists()

    report = splits.make_splits(tmp_path / "train.txt", None, out, n_classes=1000, groups=splits.imagenet_groups(),
                                reduced=(1, 2), published_md5=splits.published_md5_2014(), accept_new=True)
    said = capsys.readouterr().err
    assert said.index("is not the train list the published md5s were made from") < said.index("lists differ")
    assert {name for name, _, _ in report.new} == {name for name in report.md5}   # every list differs, all accepted
    assert (out / "half0A_train/files.txt").is_file() and (out / "reduced0002_train/files.txt").is_file()


def test_derived_md5_mismatch_stops_and_keeps_old_lists(tmp_path):
    synthetic_train(tmp_path / "train.txt", [4] * 6)
    out = tmp_path / "data"
    splits.make_splits(tmp_path / "train.txt", None, out, n_classes=6, reduced=(2,), log=quiet)
    before = tree(out)
    published = {"half0A_train/files.txt": "0" * 32, "whole_train/files.txt": md5(tmp_path / "train.txt")}
    synthetic_train(tmp_path / "train.txt", [4] * 6, seed=7)   # another order: other bytes everywhere
    published["whole_train/files.txt"] = md5(tmp_path / "train.txt")
    with pytest.raises(splits.Md5MismatchError) as err:
        splits.make_splits(tmp_path / "train.txt", None, out, n_classes=6, reduced=(2,), published_md5=published,
                           log=quiet)
    assert err.value.name == "half0A_train/files.txt" and err.value.expected == "0" * 32
    assert "half0A_train/files.txt" in str(err.value) and err.value.actual in str(err.value)
    assert tree(out) == before   # nothing written, nothing lost, no staging left behind
    with pytest.raises(splits.Md5MismatchError):
        splits.make_splits(tmp_path / "train.txt", None, tmp_path / "new", n_classes=6, reduced=(2,),
                           published_md5=published, log=quiet)
    assert not (tmp_path / "new").exists()


# --- re-runs and atomic writes ------------------------------------------------------------------------------------

def test_rerun_is_a_no_op(tmp_path, capsys):
    synthetic_train(tmp_path / "train.txt", [5] * 4)
    out = tmp_path / "data"
    first = splits.make_splits(tmp_path / "train.txt", None, out, n_classes=4, reduced=(2,))
    assert not first.no_op
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    os.utime(out / "whole_train/files.txt", ns=(1, 1))
    stamps[out / "whole_train/files.txt"] = 1
    second = splits.make_splits(tmp_path / "train.txt", None, out, n_classes=4, reduced=(2,))
    assert second.no_op and not second.written
    assert "nothing to do" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    # one more reduced size: only its files and the manifest are written
    third = splits.make_splits(tmp_path / "train.txt", None, out, n_classes=4, reduced=(2, 3), log=quiet)
    assert sorted(third.written) == ["md5sums.txt", "reduced0003_train/files.txt", "reduced0003_train/idxmap.txt"]


def test_interrupted_install_leaves_whole_files(tmp_path, monkeypatch):
    """Killed between renames: every list under its final name is a complete old or new one."""
    synthetic_train(tmp_path / "train.txt", [5] * 4)
    out = tmp_path / "data"
    splits.make_splits(tmp_path / "train.txt", None, out, n_classes=4, reduced=(), log=quiet)
    old = tree(out)
    synthetic_train(tmp_path / "train.txt", [5] * 4, seed=3)
    calls = []
    real_replace = os.replace

    def replace_then_die(src, dst):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(splits.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        splits.make_splits(tmp_path / "train.txt", None, out, n_classes=4, reduced=(), log=quiet)
    monkeypatch.undo()
    new = splits.make_splits(tmp_path / "train.txt", None, tmp_path / "fresh", n_classes=4, reduced=(), log=quiet)
    now = tree(out)
    assert set(now) == set(old)   # no staging folder or temporary file left
    assert all(now[name] in (old[name], tree(tmp_path / "fresh")[name]) for name in now)
    assert sum(now[name] != old[name] for name in now) == 3
    assert new.md5   # and a re-run completes it
    assert not splits.make_splits(tmp_path / "train.txt", None, out, n_classes=4, reduced=(), log=quiet).no_op


# --- bad input: a clear error, nothing written ----------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ("a/1.JPEG 0\na/2.JPEG\n", "train.txt:2: 'a/2.JPEG' has no label"),
    ("a/1.JPEG 0\na/2.JPEG 6\n", "train.txt:2: label 6 is out of range: there are 6 classes"),
    ("a/1.JPEG 0\na/2.JPEG -1\n", "train.txt:2: label '-1' is not a class index"),
    ("a/1.JPEG 0\nb/1.JPEG 1\na/1.JPEG 2\n", "train.txt:3: image 'a/1.JPEG' is listed twice (first at line 1)"),
    (b"a/1.JPEG 0\n\xff\xfe 1\n", "train.txt:2: not UTF-8 text"),
    ("", "no images listed"),
])
def test_bad_list_lines(tmp_path, content, message):
    path = tmp_path / "train.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(splits.SplitError, match=None) as err:
        splits.make_splits(path, None, tmp_path / "data", n_classes=6, reduced=(), log=quiet)
    assert message in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "data").exists()


def test_unreadable_list(tmp_path):
    for path in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(splits.SplitError, match=f"cannot read image list {path}"):
            splits.make_splits(path, None, tmp_path / "data", n_classes=6, log=quiet)
    assert not (tmp_path / "data").exists()


def test_class_with_too_few_images(tmp_path):
    synthetic_train(tmp_path / "train.txt", [10, 10, 3, 10])
    with pytest.raises(splits.SplitError) as err:
        splits.make_splits(tmp_path / "train.txt", None, tmp_path / "data", n_classes=4, reduced=(2, 5), log=quiet)
    assert "reduced0005_train: 1 classes have fewer than 5 train images" in str(err.value)
    assert "class 2 has 3" in str(err.value) and "--short-classes keep" in str(err.value)
    assert not (tmp_path / "data").exists()
    # a class with no train image at all is short too
    synthetic_train(tmp_path / "train.txt", [10, 10, 0, 10])
    with pytest.raises(splits.SplitError, match="class 2 has 0"):
        splits.make_splits(tmp_path / "train.txt", None, tmp_path / "data", n_classes=4, reduced=(1,), log=quiet)


@pytest.mark.parametrize("groups, message", [
    ({"x": ([0, 1], [1, 2])}, "classes [1] are in both groups"),
    ({"x": ([0, 9], [1])}, "out of range"),
    ({"x": ([], [1])}, "group A is empty"),
    ({"a b": ([0], [1])}, "grouping name"),
])
def test_bad_groups(tmp_path, groups, message):
    synthetic_train(tmp_path / "train.txt", [2] * 4)
    with pytest.raises(splits.SplitError, match=None) as err:
        splits.make_splits(tmp_path / "train.txt", None, tmp_path / "data", n_classes=4, groups=groups, log=quiet)
    assert message in str(err.value)
    assert not (tmp_path / "data").exists()


def test_read_list_and_manifest(tmp_path):
    (tmp_path / "l.txt").write_text("dir with space/a b.JPEG 3\r\n\nx.png  1\n")
    assert lists.read_list(tmp_path / "l.txt") == [("dir with space/a b.JPEG", 3), ("x.png", 1)]
    (tmp_path / "m.txt").write_text("83f4e664c68213ba43dd9b4465dd7d4e  half0A_train/files.txt\nbad\n")
    with pytest.raises(splits.SplitError, match="m.txt:2"):
        splits.read_manifest(tmp_path / "m.txt")
    assert lists.list_bytes([("a", 1), ("b", 0)]) == b"a 1\nb 0\n"


# --- the command line ---------------------------------------------------------------------------------------------

def test_cli_own_dataset(tmp_path):
    synthetic_train(tmp_path / "train.txt", [4] * 10)
    synthetic_train(tmp_path / "val.txt", [2] * 10, seed=5)
    classes = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    args = ["--train", str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt"), "--out", str(tmp_path / "d"),
            "--classes", str(tmp_path / "classes.txt"), "--seeds", "0,1", "--reduced", "1,4",
            "--group", "upper=tshirt,pullover,dress,coat,shirt", "--group", "odd=1,3,5/7,9", "--no-progress"]
    result = CliRunner().invoke(make_splits_cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d/halfupperB_train/idxmap.txt").read_text() == "1 0\n5 1\n7 2\n8 3\n9 4\n"
    assert (tmp_path / "d/halfoddB_valid/idxmap.txt").read_text() == "7 0\n9 1\n"
    assert not (tmp_path / "d/half2A_train").exists() and not (tmp_path / "d/halfnatmanA_train").exists()
    result = CliRunner().invoke(make_splits_cli, args)
    assert result.exit_code == 0 and "nothing to do" in result.output
    # too few images for --reduced 5: exit 1 with the message, nothing new written
    result = CliRunner().invoke(make_splits_cli, args + ["--reduced", "5"])   # the last --reduced counts
    assert result.exit_code == 1 and "class 0 has 4" in result.output
    assert not (tmp_path / "d/reduced0005_train").exists()


def test_cli_2014_valid(reference, tmp_path):
    result = CliRunner().invoke(make_splits_cli, ["--val", str(reference / "ilsvrc12/data/whole_valid/files.txt"),
                                                  "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "11 match their published md5" in result.output
    assert {n: md5(tmp_path / n) for n in VALID_2014} == \
        {n: m for n, m in splits.published_md5_2014().items() if n in VALID_2014}


def test_cli_bad_label_exit_code(tmp_path):
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 1000\n")
    result = CliRunner().invoke(make_splits_cli, ["--val", str(tmp_path / "val.txt"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "val.txt:1: label 1000 is out of range: there are 1000 classes" in result.output
    assert not (tmp_path / "d").exists()


def test_cli_ilsvrc_train_not_2014(tmp_path):
    """ILSVRC classes, a train list that is not the 2014 one: reported first; with --accept-new, short classes kept."""
    synthetic_train(tmp_path / "train.txt", [3] * 999 + [1], wnids=splits.ilsvrc12_classes())
    args = ["--train", str(tmp_path / "train.txt"), "--out", str(tmp_path / "d"), "--reduced", "1,2", "--no-progress"]
    result = CliRunner().invoke(make_splits_cli, args)
    assert result.exit_code == 1 and not (tmp_path / "d").exists()
    assert "is not the train list the published md5s were made from" in result.output
    assert "published 3be8e5d8cbd932cc295ec175d5110921" in result.output
    result = CliRunner().invoke(make_splits_cli, args + ["--accept-new"])
    assert result.exit_code == 0, result.output
    assert "reduced0002_train: 1 classes have fewer than 2 train images" in result.output   # kept, not an error
    assert "0 match their published md5, 13 differ" in result.output
    assert len((tmp_path / "d/reduced0002_train/files.txt").read_text().splitlines()) == 999 * 2 + 1


def test_cli_natman_from_wordnet(reference, tmp_path):
    if not (Path("/usr/share/wordnet/data.noun").is_file() or os.environ.get("WNSEARCHDIR")):
        pytest.skip("WordNet 3.0 not installed: apt-get install wordnet-base")
    result = CliRunner().invoke(make_splits_cli, ["--val", str(reference / "ilsvrc12/data/whole_valid/files.txt"),
                                                  "--out", str(tmp_path), "--natman-from", "wordnet"])
    assert result.exit_code == 0, result.output
    assert "971 of 1000 classes agree" in result.output and "9 match their published md5" in result.output
    assert len((tmp_path / "halfnatmanA_valid/idxmap.txt").read_text().splitlines()) == 478
