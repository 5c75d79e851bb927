"""Global tokens for classification: with ``num_global=1`` the [CLS] token sees the whole long input under
every pattern; without it, a token outside [CLS]'s receptive field cannot change the [CLS] output."""

from __future__ import annotations

import pytest
import torch

import hf_sparse
from hf_sparse.patterns import MaskContext, allowed_matrix, make_pattern
from tests.helpers.models import tiny_model

LENGTH = 1024
LOCAL_PATTERNS = [
    ("sliding_window", {"window": 8}),
    ("block_local", {"block_size": 32}),
    ("strided", {"stride": 64, "window": 2}),
    ("dilated", {"window": 4, "dilation": 2}),
    ("random", {"num_random": 1, "block_size": 32}),
    ("bigbird", {"block_size": 32, "num_window_blocks": 1, "num_global_blocks": 0, "num_random_blocks": 1}),
    ("longformer", {"window": 8}),
]


def _cls_state(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, 0]


def _unreachable_from_cls(pattern, layers: int) -> torch.Tensor:
    """Input positions that cannot influence [CLS] after ``layers`` layers of ``pattern`` (mask powers)."""
    allowed = allowed_matrix(pattern, MaskContext.for_length(LENGTH))
    seen = torch.zeros(LENGTH, dtype=torch.bool)
    seen[0] = True
    for _ in range(layers):
        seen = allowed[seen].any(0) | seen
    return (~seen).nonzero().flatten()


@pytest.fixture(scope="module")
def long_bert():
    model = tiny_model("bert")  # 2 layers, 256 learned positions
    return hf_sparse.extend_positions(model, LENGTH)


@pytest.mark.parametrize("name,options", LOCAL_PATTERNS)
def test_cls_sees_a_far_token_only_with_num_global(long_bert, name, options):
    ids = torch.randint(5, 100, (1, LENGTH), generator=torch.Generator().manual_seed(0))
    local = make_pattern(name, **{**options, "num_global": 0})
    far = _unreachable_from_cls(local, layers=2)
    far = far[far >= LENGTH // 2]
    assert len(far) > 100, "the test needs tokens outside [CLS]'s receptive field"
    changed = ids.clone()
    changed[0, far] = torch.where(ids[0, far] == 3, 4, 3)  # far tokens (one alone moves [CLS] by ~1/LENGTH)
    for num_global in (0, 1):
        hf_sparse.patch_model(long_bert, name, **{**options, "num_global": num_global})
        delta = (_cls_state(long_bert, ids) - _cls_state(long_bert, changed)).abs().max()
        hf_sparse.unpatch_model(long_bert)
        if num_global:
            assert delta > 1e-3, f"{name}: [CLS] with num_global=1 must see the far tokens (delta {delta:.2e})"
        else:
            assert delta <= 1e-6, f"{name}: far tokens outside [CLS]'s receptive field changed it ({delta:.2e})"


def test_vit_cls_is_global_under_local_2d():
    """local_2d keeps the prefix tokens global: a far patch changes [CLS], but not a far patch token."""
    model = hf_sparse.patch_model(tiny_model("vit"), "local_2d", window=1)  # 8x8 grid, 2 layers
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    changed = pixels.clone()
    changed[..., 28:, 28:] += 1.0  # the bottom-right patch (token 64)
    with torch.no_grad():
        a = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        b = model(pixel_values=changed, output_hidden_states=True).hidden_states
    assert (a[-1][:, 0] - b[-1][:, 0]).abs().max() > 1e-4
    # after one layer the top-left patch (token 1) sees only its 3x3 neighbourhood and [CLS]'s input
    assert (a[1][:, 1] - b[1][:, 1]).abs().max() <= 1e-6
