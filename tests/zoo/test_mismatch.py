"""The one-line description of a checkpoint that does not fit its architecture."""

from __future__ import annotations

import torch

from filterstats.zoo._mismatch import describe_mismatch


def _state(**shapes):
    return {name.replace("_", "."): torch.zeros(shape) for name, shape in shapes.items()}


def test_a_fitting_checkpoint_has_no_mismatch():
    model = _state(conv_weight=(4, 3, 3, 3), conv_bias=(4,))
    assert describe_mismatch(model, dict(model)) == ""


def test_counts_and_the_first_three_keys_of_each_kind():
    model = {f"layer{i}.weight": torch.zeros(2, 2) for i in range(10)}
    found = {f"other{i}.weight": torch.zeros(2, 2) for i in range(5)}
    found["layer0.weight"] = torch.zeros(3, 2)
    assert describe_mismatch(model, found) == (
        "9 keys missing from the file ('layer1.weight', 'layer2.weight', 'layer3.weight', "
        "... 6 more); 5 unexpected keys in the file ('other0.weight', 'other1.weight', "
        "'other2.weight', ... 2 more); 1 tensor of another shape ('layer0.weight': file "
        "(3, 2), model (2, 2))"
    )


def test_a_thousand_missing_keys_stay_one_short_line():
    model = {f"blocks.{i}.conv.weight": torch.zeros(1) for i in range(1000)}
    found = {f"model.{key}": value for key, value in model.items()}  # a wrapper's prefix
    message = describe_mismatch(model, found)
    assert "1000 keys missing" in message and "1000 unexpected keys" in message
    assert len(message) < 400 and "\n" not in message


def test_keys_that_may_be_missing_and_ignored_extras():
    model = _state(conv_weight=(1,), norm_mu=(1,))
    found = _state(conv_weight=(1,), extra=(1,))
    assert (
        describe_mismatch(
            model, found, may_be_missing=lambda key: key.endswith(".mu"), ignore_unexpected=True
        )
        == ""
    )
    assert describe_mismatch(model, found) == (
        "1 key missing from the file ('norm.mu'); 1 unexpected key in the file ('extra')"
    )
