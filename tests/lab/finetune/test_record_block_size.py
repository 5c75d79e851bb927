"""metrics.json reports the tile size the block-sparse kernel actually uses."""

from __future__ import annotations

import pytest
import torch

import hf_sparse
from hf_sparse.config import SparseConfig
from hf_sparse.kernels import AttentionCall
from hf_sparse.kernels.blocksparse import plan_for
from hf_sparse.lab.finetune.record import sparse_summary
from hf_sparse.lab.finetune.tasks import get_task
from hf_sparse.patterns import MaskContext
from tests.helpers.models import tiny_model


@pytest.mark.parametrize(("length", "expected"), [(1024, 64), (4096, 128)])
def test_reported_block_size_is_the_kernels_plan_block_size(length, expected):
    model = tiny_model("bert")
    config = SparseConfig.build("sliding_window", window=64)  # no block size of its own: the kernel's default
    hf_sparse.patch_model(model, config)
    reported = sparse_summary(model, config, get_task("sentiment"), [length])["block_size"]
    x = torch.zeros(1, 1, length, 8)
    call = AttentionCall(query=x, key=x, value=x, pattern=config.pattern, ctx=MaskContext.for_length(length),
                         block_size=config.kernel_block_size)
    assert reported == plan_for(call).block_size == expected
