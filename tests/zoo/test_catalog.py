import dataclasses

import pytest

from filterstats.zoo.catalog import PaperCatalog, PaperPair, paper_pairs

# Totals of robust 3x3 filters per dataset as the paper's repository reports them
# (model_stats notebook), independent of the per-model counts in the CSV.
PAPER_TOTALS = {"cifar10": 447_825_488, "cifar100": 158_015_344, "imagenet": 10_022_912}
PAPER_COUNTS = {"cifar10": 49, "cifar100": 17, "imagenet": 5}


def test_seventy_one_pairs_per_dataset():
    pairs = paper_pairs()
    assert isinstance(pairs, PaperCatalog)
    assert len(pairs) == 71
    for dataset, count in PAPER_COUNTS.items():
        assert len(pairs.where(dataset=dataset)) == count


def test_filter_totals_match_the_paper():
    pairs = paper_pairs()
    for dataset, total in PAPER_TOTALS.items():
        assert sum(p.n_3x3_filters for p in pairs.where(dataset=dataset)) == total


def test_records_are_typed_and_frozen():
    pair = paper_pairs()[0]
    assert isinstance(pair, PaperPair)
    assert isinstance(pair.n_3x3_filters, int)
    assert isinstance(pair.robust_extra_data, bool)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.dataset = "mnist"


def test_sparse_share_is_consistent_with_counts():
    for pair in paper_pairs():
        expected = 1 - pair.robust_nonsparse_3x3 / pair.n_3x3_filters
        assert pair.robust_sparse_share == pytest.approx(expected, abs=6e-5)


def test_imagenet_twins_have_no_autoattack_value():
    for pair in paper_pairs().where(dataset="imagenet"):
        assert pair.normal_autoattack_acc is None
        assert pair.normal_twin_source == "timm pretrained"


def test_where_rejects_unknown_fields():
    with pytest.raises(TypeError, match="no field"):
        paper_pairs().where(dataset_name="cifar10")


def test_to_pandas():
    pytest.importorskip("pandas")
    frame = paper_pairs().to_pandas()
    assert frame.shape == (71, len(dataclasses.fields(PaperPair)))
    assert frame["n_3x3_filters"].sum() == sum(PAPER_TOTALS.values())
    assert paper_pairs().to_records()[0]["paper_id"] == "Andriushchenko2020Understanding"
