"""BERT masking for mask_lm tasks: its statistics, what it never touches, and its determinism."""

from __future__ import annotations

import pytest
import torch

from data_utils.masking import MaskingSpec, mask_tokens

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 1000


def _batch(n_rows: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words... [SEP] then padding, rows of random lengths in [3, width]."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n_rows, width), generator=generator)
    lengths = torch.randint(3, width + 1, (n_rows,), generator=generator)
    attention = (torch.arange(width) < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(n_rows), lengths - 1] = SEP
    ids[attention == 0] = PAD
    return ids, attention


def _mask(ids: torch.Tensor, attention: torch.Tensor, seeds: list[int], probability: float = 0.15):
    return mask_tokens(
        ids,
        attention,
        seeds,
        mask_token_id=MASK,
        special_ids=SPECIALS,
        vocab_size=VOCAB,
        probability=probability,
    )


@pytest.mark.parametrize("probability", [0.15, 0.4])
def test_the_chosen_share_and_the_80_10_10_split_match_bert(probability: float) -> None:
    ids, attention = _batch(1024, 128)
    masked = _mask(ids, attention, list(range(1024)), probability)
    candidates = attention.bool() & (ids > MASK)
    chosen = masked.positions
    # ~66k candidates: the binomial standard error of the share is ~0.0015 at p = 0.15.
    assert chosen.sum().item() / candidates.sum().item() == pytest.approx(probability, abs=0.006)
    new, old = masked.input_ids[chosen], ids[chosen]
    as_mask = (new == MASK).float().mean().item()
    kept = (new == old).float().mean().item()
    randomised = ((new != MASK) & (new != old)).float().mean().item()
    assert as_mask == pytest.approx(0.8, abs=0.012)
    assert kept == pytest.approx(0.1, abs=0.01)  # includes the 1/VOCAB random draws that hit the original
    assert randomised == pytest.approx(0.1, abs=0.01)
    # Random replacements are spread over the vocabulary, not a few ids.
    assert torch.unique(new[(new != MASK) & (new != old)]).numel() > 500
    assert torch.equal(masked.targets, old)


def test_specials_and_padding_are_never_chosen_or_changed() -> None:
    ids, attention = _batch(256, 64, seed=1)
    ids[:, 5] = UNK  # a special in the middle of the text
    masked = _mask(ids, attention, list(range(256)), probability=0.9)
    special = torch.isin(ids, torch.tensor(SPECIALS)) | (attention == 0)
    assert not (masked.positions & special).any()
    assert torch.equal(masked.input_ids[~masked.positions], ids[~masked.positions])
    assert torch.equal(masked.input_ids[attention == 0], ids[attention == 0])


def test_every_row_with_text_gets_at_least_one_masked_token() -> None:
    ids, attention = _batch(512, 6, seed=2)  # 1 to 4 words per row: many rows would draw no token at 15%
    masked = _mask(ids, attention, list(range(512)))
    has_text = (attention.bool() & (ids > MASK)).any(dim=1)
    assert has_text.all()
    assert masked.positions.any(dim=1).all()
    only_specials = torch.tensor([[CLS, SEP, PAD, PAD]])
    empty = _mask(only_specials, torch.tensor([[1, 1, 0, 0]]), [7])
    assert not empty.positions.any() and empty.targets.numel() == 0


def test_the_same_seed_gives_the_same_masks_whatever_the_batch_and_padding() -> None:
    ids, attention = _batch(16, 40, seed=3)
    seeds = [1000 + i for i in range(16)]
    whole = _mask(ids, attention, seeds)
    # The same rows in reverse order, padded much wider, on their own or in a different batch.
    wide_ids = torch.cat([ids, torch.zeros(16, 88, dtype=ids.dtype)], dim=1).flip(0)
    wide_attention = torch.cat([attention, torch.zeros(16, 88, dtype=attention.dtype)], dim=1).flip(0)
    wide = _mask(wide_ids, wide_attention, seeds[::-1])
    assert torch.equal(wide.input_ids[:, :40].flip(0), whole.input_ids)
    assert torch.equal(wide.positions[:, :40].flip(0), whole.positions)
    assert not wide.positions[:, 40:].any()
    alone = _mask(ids[3:4, :20], attention[3:4, :20], seeds[3:4])  # row 3 trimmed to 20 columns
    length = int(attention[3].sum())
    if length <= 20:
        assert torch.equal(alone.positions[0, :length], whole.positions[3, :length])
    # A different seed gives different masks.
    other = _mask(ids, attention, [s + 1 for s in seeds])
    assert not torch.equal(other.positions, whole.positions)


def test_seeds_beyond_32_bits_differ_in_their_high_bits() -> None:
    ids, attention = _batch(2, 128, seed=4)
    ids[1], attention[1] = ids[0], attention[0]
    masked = _mask(ids, attention, [5, 5 + (1 << 40)], probability=0.5)
    assert not torch.equal(masked.positions[0], masked.positions[1])


def test_bad_arguments_are_refused() -> None:
    ids, attention = _batch(2, 8)
    with pytest.raises(ValueError, match="2 rows"):
        _mask(ids, attention, [1])
    with pytest.raises(ValueError, match="probability"):
        _mask(ids, attention, [1, 2], probability=1.0)


def test_the_spec_comes_from_the_tokenizer(tiny_tokenizer) -> None:
    spec = MaskingSpec.from_tokenizer(tiny_tokenizer)
    assert spec.mask_token_id == MASK
    assert set(spec.special_ids) == set(SPECIALS)
    assert spec.vocab_size == len(tiny_tokenizer)
