"""Heads (method.md 1.5): shapes and initialisation."""

import pytest
import torch
from torch import nn

from iclf.models.heads import IDClassifier, ITMHead, MLMHead


def test_mlm_head_shape_and_init():
    torch.manual_seed(0)
    width, vocab = 256, 1000
    head = MLMHead(width, vocab)
    out = head(torch.randn(3, 5, width))
    assert out.shape == (3, 5, vocab)
    assert abs(head.dense.weight.std().item() - (2 * width) ** -0.5) < 0.05 * (2 * width) ** -0.5
    fc_std = width**-0.5 * 8**-0.5
    assert abs(head.fc.weight.std().item() - fc_std) < 0.05 * fc_std
    assert torch.all(head.ln.weight == 1) and torch.all(head.ln.bias == 0)


def test_itm_head_structure():
    torch.manual_seed(0)
    head = ITMHead(16)
    assert head(torch.randn(4, 16)).shape == (4, 2)
    layers = list(head.net)
    assert isinstance(layers[0], nn.Linear) and layers[0].weight.shape == (32, 16)
    assert isinstance(layers[1], nn.LayerNorm) and layers[1].normalized_shape == (32,)
    assert isinstance(layers[2], nn.GELU) and layers[2].approximate == "none"
    assert isinstance(layers[3], nn.Linear) and layers[3].weight.shape == (2, 32)


def test_id_classifier_init():
    torch.manual_seed(0)
    clf = IDClassifier(64, 500)
    assert clf(torch.randn(2, 64)).shape == (2, 500)
    assert abs(clf.fc.weight.std().item() - 0.001) < 0.0001
    assert torch.count_nonzero(clf.fc.bias) == 0


@pytest.mark.parametrize(
    "build", [lambda: MLMHead(0, 10), lambda: ITMHead(0), lambda: IDClassifier(8, 0)]
)
def test_bad_sizes_raise(build):
    with pytest.raises(ValueError):
        build()
