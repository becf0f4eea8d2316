"""engines/prefix_cache.py on its own: the pieces that need no model (the engine tests cover the rest)."""

from __future__ import annotations

import torch

from engines import prefix_cache
from engines.prefix_cache import SharedPrefix, common_prefix_length, left_pad


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert common_prefix_length([[1, 2], [1, 2, 3]]) == 2
    assert common_prefix_length([[5], [6]]) == 0


def test_left_pad_puts_every_row_last_token_in_the_last_column():
    ids, mask, positions = left_pad([[7, 8, 9], [4]], pad_token_id=0, device="cpu")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]  # a padded row sees the positions it has unpadded


class _Out:
    def __init__(self, batch: int, cache):
        self.logits = torch.zeros((batch, 1, 5))
        self.cache = cache


class _Model:
    """Records each forward's input width; its cache is not a plain dynamic one."""

    def __init__(self):
        self.widths = []

    def forward(self, input_ids, cache=None, **kwargs):  # only the signature is read
        raise AssertionError("not called")

    def __call__(self, input_ids, **kwargs):
        self.widths.append(tuple(input_ids.shape))
        return _Out(input_ids.shape[0], cache=object())


def test_short_or_single_rows_take_the_plain_path_and_an_unfit_cache_turns_sharing_off(monkeypatch):
    model = _Model()
    prefix = SharedPrefix(model, pad_token_id=0, device="cpu")
    assert prefix.cache_argument == "cache"
    rows = [list(range(40)) + [1], list(range(40)) + [2, 3]]
    ids, mask, kwargs = prefix.generation_inputs(rows[:1])
    assert kwargs == {} and model.widths == []  # one row: nothing to share
    monkeypatch.setattr(prefix_cache, "MIN_SHARED_PREFIX", 100)
    assert prefix.generation_inputs(rows)[2] == {} and model.widths == []  # prefix too short to share
    monkeypatch.setattr(prefix_cache, "MIN_SHARED_PREFIX", 32)
    ids, mask, kwargs = prefix.generation_inputs(rows)
    assert model.widths == [(1, 40)] and kwargs == {} and not prefix.enabled  # tried once, then off
    assert ids.shape == (2, 42) and mask.sum().item() == 41 + 42
    logits, cache, mask = prefix.last_logits(rows, keep_cache=False)
    assert model.widths[-1] == (2, 42) and logits.shape == (2, 5) and cache is None
