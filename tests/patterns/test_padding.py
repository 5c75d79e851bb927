"""Padding and global tokens: positions count from each row's first real token, so a padded batch gives what each
sequence gives alone (left padding moves the global slots onto the first real tokens; right padding changes
nothing). Tokenizer-free: ids and masks are built by hand, token 0 is the pad."""

from __future__ import annotations

import pytest
import torch

import hf_sparse
from tests.helpers.models import tiny_model

PAD = 0
PROMPTS = [[17, 45, 3, 88, 9, 61, 23, 70, 12, 54, 8, 96, 33, 27], [31, 5, 77, 40, 66, 19, 84, 52, 11]]


def _batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, PROMPTS))
    ids = torch.full((len(PROMPTS), width), PAD)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(PROMPTS):
        span = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        ids[row, span] = torch.tensor(prompt)
        mask[row, span] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.fixture
def gpt2():
    model = tiny_model("gpt2")
    model.generation_config.pad_token_id = PAD
    model.config.pad_token_id = PAD
    return hf_sparse.patch_model(model, "sliding_window", window=4, num_global=1)


def test_gpt2_left_padded_generation_equals_each_prompt_alone(gpt2):
    ids, mask = _batch("left")
    with torch.no_grad():
        batched = gpt2.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                                output_logits=True, return_dict_in_generate=True)
        for row, prompt in enumerate(PROMPTS):
            alone_ids = torch.tensor([prompt])
            alone = gpt2.generate(input_ids=alone_ids, attention_mask=torch.ones_like(alone_ids), do_sample=False,
                                  max_new_tokens=8, output_logits=True, return_dict_in_generate=True)
            new = batched.sequences[row, ids.shape[1]:].tolist()
            assert new == alone.sequences[0, len(prompt):].tolist(), f"prompt {row}"
            for step, (got, want) in enumerate(zip(batched.logits, alone.logits, strict=True)):
                torch.testing.assert_close(got[row], want[0], atol=1e-5, rtol=1e-5, msg=f"prompt {row} step {step}")


@pytest.mark.parametrize("side", ["left", "right"])
def test_gpt2_padded_forward_logits_of_real_tokens_equal_alone(gpt2, side):
    ids, mask = _batch(side)
    with torch.no_grad():
        batched = gpt2(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
        for row, prompt in enumerate(PROMPTS):
            alone = gpt2(input_ids=torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(batched[row][mask[row].bool()], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("backend", ["auto", "reference", "masked_sdpa", "blocksparse"])
def test_bert_padded_hidden_states_of_real_tokens_equal_alone(side, backend):
    model = hf_sparse.patch_model(tiny_model("bert"), "sliding_window", window=2, num_global=1, backend=backend)
    ids, mask = _batch(side)
    with torch.no_grad():
        batched = model.bert(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state
        for row, prompt in enumerate(PROMPTS):
            alone = model.bert(input_ids=torch.tensor([prompt])).last_hidden_state[0]
            torch.testing.assert_close(batched[row][mask[row].bool()], alone, atol=1e-5, rtol=1e-5)
    used = set(hf_sparse.last_backends(model).values())
    assert used == ({"masked_sdpa"} if backend == "auto" else {backend}), used
