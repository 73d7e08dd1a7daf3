"""NoFrost* augmentations: the texture-debiased view (torchvision) and on-the-fly DeepAugment."""
import pytest
import torch
from safetensors.torch import save_file

from fastnofrost.data.augment import texture_debiased_transform
from fastnofrost.data.deepaugment import (BODY_OPTIONS, CAE, EDSR, LATENT_OPTIONS, PRE_OPTIONS, WEIGHT_OPS,
                                          DeepAugment, load_weights, perturb_weight)


def test_texture_debiased_view_rates():
    """Colour distortion with p 0.5, inside it grayscale with p 0.2: ~10% gray outputs."""
    torch.manual_seed(0)
    image = torch.rand(3, 12, 12)
    view = texture_debiased_transform(8)
    outs = torch.stack([view(image) for _ in range(400)])
    assert outs.shape == (400, 3, 8, 8) and 0 <= outs.min() and outs.max() <= 1
    gray = ((outs[:, 0] - outs[:, 1]).abs().amax((1, 2)) < 1e-6).float().mean().item()
    assert 0.04 < gray < 0.2


@pytest.fixture
def tiny_nets():
    """TEST FIXTURE: tiny EDSR and CAE with random weights, marked as such. Real runs load the
    pretrained weights (DeepAugment.from_files); the weights here only exercise the code."""
    torch.manual_seed(0)
    edsr, cae = EDSR(n_resblocks=6, n_feats=8), CAE(width=16)
    edsr.weights_source = cae.weights_source = "random test fixture"
    return edsr.eval(), cae.eval()


def test_refuses_nets_without_weights():
    with pytest.raises(ValueError, match="no loaded weights"):
        DeepAugment(EDSR(n_resblocks=1, n_feats=4))
    with pytest.raises(FileNotFoundError, match="random weights are never used"):
        DeepAugment.from_files(edsr_path="/nonexistent/edsr_baseline_x4.pt")
    with pytest.raises(ValueError, match="weight files"):
        DeepAugment.from_files()


def test_loads_weights_safely(tmp_path, tiny_nets):
    edsr, cae = tiny_nets
    save_file(edsr.state_dict(), str(tmp_path / "edsr.safetensors"))
    torch.save(cae.state_dict(), tmp_path / "cae.state")
    edsr2 = load_weights(EDSR(n_resblocks=6, n_feats=8), str(tmp_path / "edsr.safetensors"), "EDSR")
    cae2 = load_weights(CAE(width=16), str(tmp_path / "cae.state"), "CAE")
    for a, b in ((edsr, edsr2), (cae, cae2)):
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert cae2.weights_source.endswith("cae.state")


def test_batch_in_batch_out(tiny_nets):
    x = torch.rand(3, 3, 30, 26)
    da, again = DeepAugment(*tiny_nets, seed=3), DeepAugment(*tiny_nets, seed=3)
    for step in range(6):
        torch.manual_seed(step)
        y = da(x)
        assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
        assert not torch.equal(y, x)
        torch.manual_seed(step)
        assert torch.equal(y, again(x))  # reproducible from (seed, torch seed)
    assert not any(p.requires_grad for p in da.parameters())


@pytest.mark.parametrize("pre", PRE_OPTIONS)
@pytest.mark.parametrize("body", BODY_OPTIONS)
def test_edsr_activation_distortions(tiny_nets, pre, body):
    edsr = tiny_nets[0]
    out = edsr(torch.rand(2, 3, 8, 8) * 255, pre=pre, body=body)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("latent", LATENT_OPTIONS + ("none",))
def test_cae_latent_distortions(tiny_nets, latent):
    out = tiny_nets[1](torch.rand(2, 3, 16, 16), latent=latent)
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1


@pytest.mark.parametrize("op", WEIGHT_OPS)
def test_weight_perturbations_keep_shape_and_change_weights(op):
    import random

    w = torch.randn(8, 8, 3, 3)
    out = perturb_weight(w, op, random.Random(0))
    assert out.shape == w.shape and torch.isfinite(out).all() and not torch.equal(out, w)
