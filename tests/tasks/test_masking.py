import pytest
import torch

from progdistill.distill.losses import IGNORE_INDEX
from progdistill.tasks.pcfg.task import Vocabulary, mask_tokens, pad_sentences

VOCAB = Vocabulary(("a", "b", "c"))


def test_vocabulary_ids():
    assert (VOCAB.bos, VOCAB.eos, VOCAB.pad, VOCAB.mask, VOCAB.size) == (3, 4, 5, 6, 7)
    with pytest.raises(ValueError, match="special token='CLS'"):
        VOCAB.special("CLS")


def test_padding_adds_bos_eos_and_pads():
    ids, attention = pad_sentences([[0, 1, 2], [2]], VOCAB)
    assert ids.tolist() == [[3, 0, 1, 2, 4], [3, 2, 4, 5, 5]]
    assert attention.tolist() == [[True] * 5, [True, True, True, False, False]]
    with pytest.raises(ValueError, match="needs 5 positions .* max_positions=4"):
        pad_sentences([[0, 1, 2]], VOCAB, max_positions=4)
    with pytest.raises(ValueError, match="outside the terminal ids 0..2"):
        pad_sentences([[0, 3]], VOCAB)


def test_masking_rates_and_targets():
    gen = torch.Generator().manual_seed(0)
    sentences = torch.randint(0, 3, (400, 60), generator=gen).tolist()
    ids, _ = pad_sentences(sentences, VOCAB)
    inputs, targets = mask_tokens(ids, VOCAB, 0.3, torch.Generator().manual_seed(1))
    selected = targets != IGNORE_INDEX
    terminal = ids < 3
    assert not (selected & ~terminal).any()  # BOS / EOS / PAD never selected
    assert torch.equal(targets[selected], ids[selected])
    rate = selected.sum().item() / terminal.sum().item()
    assert rate == pytest.approx(0.3, abs=0.01)
    masked = (inputs == VOCAB.mask) & selected
    changed = (inputs != ids) & (inputs != VOCAB.mask) & selected
    kept = (inputs == ids) & selected
    n = selected.sum().item()
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.02)
    # a random terminal equals the original a third of the time: 0.1 * 2/3 changed, 0.1 + 0.1/3 kept
    assert changed.sum().item() / n == pytest.approx(0.1 * 2 / 3, abs=0.01)
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / 3, abs=0.015)
    assert torch.equal(inputs[~selected], ids[~selected])


def test_masking_is_deterministic_and_rate_validated():
    ids, _ = pad_sentences([[0, 1, 2, 0, 1]] * 4, VOCAB)
    a = mask_tokens(ids, VOCAB, 0.5, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, VOCAB, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for rate in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=f"mask_rate={rate!r} is invalid"):
            mask_tokens(ids, VOCAB, rate, torch.Generator())
