"""The neural refiner: shapes, identity at initialisation, switch-off, precision/layout, training signal."""

import pytest
import torch

from avatar_core.errors import ParameterError
from avatar_core.render.refiner import Refiner, RefinerConfig, refine, refiner_from_state


def test_untrained_refiner_is_identity_on_rgb_and_off_is_first_three_channels():
    torch.manual_seed(0)
    feats = torch.rand(2, 20, 22, 8)  # odd sizes exercise the padding
    r = Refiner(RefinerConfig(in_channels=8, widths=(8, 12, 16)))
    out = r(feats)
    assert out.shape == (2, 20, 22, 3) and out.dtype == torch.float32
    assert torch.allclose(out, feats[..., :3])
    assert torch.equal(refine(feats, None), feats[..., :3])


def test_refiner_learns():
    torch.manual_seed(0)
    feats = torch.rand(1, 16, 16, 6)
    target = 0.5 * feats[..., :3] + 0.3 * feats[..., 3:6]
    r = Refiner(RefinerConfig(in_channels=6, widths=(8, 8, 8)))
    opt = torch.optim.Adam(r.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss = (r(feats) - target).abs().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_low_precision_channels_last_matches_float32():
    torch.manual_seed(1)
    feats = torch.rand(1, 12, 16, 8)
    r = Refiner(RefinerConfig(in_channels=8, widths=(8, 8, 8)))
    torch.nn.init.normal_(r.head.weight, std=0.1)  # make the residual non-trivial
    with torch.no_grad():
        ref = r(feats)
    fast = Refiner(RefinerConfig(in_channels=8, widths=(8, 8, 8)))
    fast.load_state_dict(r.state_dict())
    fast.optimize_for_inference(torch.bfloat16, channels_last=True)
    assert fast.head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = fast(feats)
    assert out.dtype == torch.float32 and float((out - ref).abs().max()) < 5e-2


def test_bad_input_and_state_rejected():
    r = Refiner(RefinerConfig(in_channels=8, widths=(8, 8, 8)))
    with pytest.raises(ParameterError):
        r(torch.rand(1, 8, 8, 5))
    with pytest.raises(ParameterError):
        refiner_from_state(r.state_dict(), {"in_channels": 16, "widths": [8, 8, 8]})
    assert refiner_from_state(None) is None
    again = refiner_from_state(r.state_dict(), r.config.to_dict())
    assert torch.equal(again.head.weight, r.head.weight)
