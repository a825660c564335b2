"""The catalog: the 2014 release's 170 net directories, their kinds, blocks and base nets."""
import re
from collections import Counter

import pytest

from convnet_transfer.nets.catalog import (BLOCKS, Catalog, NetSpec, UnknownNetError, paper_catalog,
                                      transfer_catalog)


def test_paper_catalog_counts():
    cat = paper_catalog()
    assert len(cat) == 170
    kinds = Counter(net.kind for net in cat)
    # 10 base halves; selffer AA for 4 splits (frozen) + 2 splits (fine-tuned) = 6 x 7; transfer AB/BA for 4
    # splits + 2 fine-tuned + natman AB/BA = 14 x 7; 7 nolearn; 12 reduced; netbase
    assert kinds == {"base": 10, "selffer": 42, "transfer": 98, "nolearn": 7, "reduced": 12, "whole": 1}
    # the README's 163 = all but the 7 nolearn nets
    assert len([n for n in cat if n.kind != "nolearn"]) == 163


def test_paper_catalog_names_are_the_release_directories(reference):
    names = sorted(p.name for p in (reference / "results").iterdir() if p.is_dir())
    assert sorted(paper_catalog().names) == names


def test_net_facts():
    cat = paper_catalog()
    net = cat["transfer-ft0B0A_1_4"]
    assert (net.kind, net.base, net.split, net.val_split, net.n, net.fine_tuned, net.block) == \
        ("transfer", "half0B", "half0A", "half0A", 4, True, "two")
    assert net.frozen == 0 and net.renamed
    net = cat["transfer2A2A_1_7"]
    assert (net.kind, net.base, net.split, net.n, net.fine_tuned, net.frozen) == ("selffer", "half2A", "half2A", 7,
                                                                                   False, 7)
    assert cat["transfernatmanBA_1_2"].base == "halfnatmanB" and cat["transfernatmanBA_1_2"].split == "halfnatmanA"
    net = cat["nolearn_1_3"]
    assert (net.kind, net.base, net.split, net.n, net.frozen, net.renamed) == ("nolearn", None, "whole", 3, 3, False)
    assert cat["reduced-0010"].split == "reduced0010" and cat["reduced-0010"].val_split == "whole"
    assert cat["reduced-1300"].split == "whole"      # 1300 per class is the whole set
    assert cat["reduced-0001"].solver == {"base_lr": 0.0125, "stepsize": 64000, "max_iter": 200000}
    assert cat["netbase"].kind == "whole" and cat["netbase"].block == "whenever"
    assert cat["half3B"].block == "one" and cat["half3B"].base is None


def test_order_blocks_and_dependencies():
    cat = paper_catalog()
    blocks = [net.block for net in cat]
    assert blocks == sorted(blocks, key=BLOCKS.index)
    seen = set()
    for net in cat:
        if net.base:
            assert net.base in seen, f"{net.name} listed before its base net {net.base}"
            assert cat[net.base].kind == "base"
        seen.add(net.name)
    for entry in cat.as_json():
        assert set(entry) == {"name", "kind", "block", "depends_on", "split", "n", "fine_tuned"}


def test_names_follow_the_release_pattern():
    pattern = re.compile(r"half[0-3][AB]|halfnatman[AB]|netbase|nolearn_1_[1-7]|reduced-\d{4}|"
                         r"transfer(-ft)?([0-3])[AB]\2[AB]_1_[1-7]|transfernatman(AB|BA)_1_[1-7]")
    for name in paper_catalog().names:
        assert pattern.fullmatch(name), name


def test_select_globs_and_unknown_names():
    cat = paper_catalog()
    assert cat.select("transfer0A0B_*").names == [f"transfer0A0B_1_{n}" for n in range(1, 8)]
    assert cat.select(["half0A", "netbase"]).names == ["half0A", "netbase"]
    assert len(cat.select("transfer-ft*,nolearn*")) == 42 + 7
    assert cat.select(None) is cat
    with pytest.raises(UnknownNetError, match=r"unknown net 'transfer0A0C_1_1'.*did you mean"):
        cat.select("transfer0A0C_1_1")
    with pytest.raises(UnknownNetError, match="no net matches 'foo\\*'"):
        cat.select("foo*")
    with pytest.raises(UnknownNetError, match="unknown net 'half9A'"):
        cat["half9A"]


def test_transfer_catalog_for_another_dataset():
    cat = transfer_catalog(splits=("0",), n_layers=3, pairs=("AA", "AB", "BA", "BB"), fine_tuned=True,
                           natman=False, nolearn=False, reduced=(10, 6000), whole_per_class=6000, whole=True)
    kinds = Counter(net.kind for net in cat)
    assert kinds == {"base": 2, "selffer": 2 * 2 * 3, "transfer": 2 * 2 * 3, "reduced": 2, "whole": 1}
    assert cat["transfer0B0B_1_3"].kind == "selffer"
    assert cat["transfer-ft0A0B_1_2"].fine_tuned
    assert cat["reduced-6000"].split == "whole" and cat["reduced-0010"].split == "reduced0010"
    assert "transfer0A0B_1_4" not in cat


def test_catalog_refuses_inconsistent_nets():
    with pytest.raises(ValueError, match="base net half0A is not in the catalog"):
        Catalog([NetSpec("transfer0A0B_1_1", "transfer", "half0B", "half0B", base="half0A", n=1)])
    with pytest.raises(ValueError, match="twice"):
        Catalog([NetSpec("x", "whole", "whole", "whole")] * 2)
    with pytest.raises(ValueError, match="unknown kind"):
        Catalog([NetSpec("x", "other", "whole", "whole")])
