"""WordNet 3.0 nouns from Debian's wordnet-base, and the natural / man-made rule against the 2014 grouping."""
import pytest

from convnet_transfer.data import splits, wordnet

pytestmark = pytest.mark.skipif(not (wordnet.default_wordnet_dir() / "data.noun").is_file(),
                                reason="WordNet 3.0 not installed: apt-get install wordnet-base "
                                       "(or set $WNSEARCHDIR to a folder with data.noun and index.noun)")


@pytest.fixture(scope="module")
def wn():
    return wordnet.WordNet()


def test_offsets_are_ilsvrc_wnids(wn):
    assert wn.lookup("artifact") == (wordnet.ARTIFACT,) == wn.lookup("artefact")
    assert wn[wordnet.ARTIFACT].words == ("artifact", "artefact")
    assert wn["n01440764"].words[0] == "tench"
    assert wn.hypernym_path("n01440764")[-1] == "n00001740"   # entity, the root
    names = splits.ilsvrc12_class_names()
    # every ILSVRC-2012 class is a WordNet 3.0 noun synset, and its first lemma is the class's first name
    for wnid, name in zip(splits.ilsvrc12_classes(), names):
        assert wn[wnid].words[0] == name.split(", ")[0]


def test_hypernyms(wn):
    dog = wn.lookup("dog")[0]
    assert wn.is_a(dog, wn.lookup("animal")[0]) and not wn.is_a(dog, wordnet.ARTIFACT)
    assert wn.is_a(wn.lookup("airliner")[0], wordnet.ARTIFACT)
    # instance hypernyms (@i) are followed too: the Mississippi is an instance of river -> ... -> body of water
    river = [w for w in wn.lookup("mississippi") if "river" in wn[w].gloss][0]
    assert wn[river].hypernyms == wn.lookup("river")[:1]
    assert wn.is_a(river, wn.lookup("body_of_water")[0])


def test_bad_ids(wn):
    with pytest.raises(wordnet.WordNetError, match="not a WordNet noun id"):
        wn["01440764"]
    with pytest.raises(wordnet.WordNetError, match="not a noun synset"):
        wn["n01440765"]
    with pytest.raises(wordnet.WordNetError, match="wordnet-base"):
        wordnet.WordNet("/nonexistent")["n01440764"]


def test_rule_against_2014_grouping(wn):
    """The plain rule (under 'artifact' = man-made) on the 1000 classes, against the 2014 natural/man-made split."""
    wnids = splits.ilsvrc12_classes()
    natural, manmade = wordnet.natman_from_wordnet(wnids, wn)
    assert (len(natural), len(manmade)) == (478, 522)
    comparison = wordnet.compare_groupings(splits.imagenet_groups()["natman"], (natural, manmade))
    assert comparison.agree == 971
    assert comparison.a_to_b == []        # every 2014 natural class is natural for WordNet too
    # the disagreements: foods, drinks, signs, 'plate', 'cup', 'bubble', 'toilet tissue' (not artifacts in WordNet)
    assert comparison.b_to_a == [919, 920, 922, 923, 924, 925, 926, 927, 928, 929, 930, 931, 932, 933, 934, 935,
                                 959, 960, 961, 962, 963, 964, 965, 966, 967, 968, 969, 971, 999]
    text = comparison.describe(wnids, splits.ilsvrc12_class_names(), ("natural", "man-made"), ("2014", "WordNet"))
    assert "971 of 1000 classes agree" in text and "n07873807 pizza" in text
