"""DeepAugment on the fly: image-to-image networks with randomly perturbed weights and
activations (Hendrycks et al., "The Many Faces of Robustness", 2021), run on a training batch.

The reference pre-generates two distorted copies of ImageNet offline, one through EDSR (a
super-resolution net: 16 residual blocks, 64 features, x4) and one through a compressive
autoencoder (CAE), resampling the perturbed weights every ~20 images. Here the same
networks and the same families of perturbation run in the training loop on the training
device: every call draws new perturbed weights (``torch.func.functional_call``; the loaded
weights stay untouched) and one activation distortion, shared by the batch.

* EDSR: the batch is downscaled x4 and super-resolved back (the reference: resize to 128, x4).
  Weights: 3 perturbations of residual-block convs; activations: after the head, swap channels
  / drop 5% / negate 2.5% / none; in the body, negate / re-activate (ReLU or GELU) / flip
  (channels with height or width) / skip up to 3 blocks / none.
* CAE: weights: 1 perturbation of a middle layer; latent: scale / drop 20% or negate 10% of
  positions / permute 10 channels / flip channels / near-identity, extra-tap or shift 3x3
  channel mixing / none; then the CAE's stochastic binarization.

Weight perturbations: reverse filter order, negate, zero, -GELU, multiply by a Laplacian or
edge kernel, multiplicative noise (``1 + a*u*r``, u, r uniform [0, 1), as the reference computes
it), additive noise, rot90, random sign or keep masks, negate half the filters, keep the
largest tap, one-hot shift mixing.

Weights are files the user provides (EDSR-PyTorch's ``edsr_baseline_x4.pt``, the reference's
CAE ``model_final.state``, or safetensors of either), loaded with ``weights_only=True``. A net
without loaded weights is refused; tests build tiny random nets and mark them explicitly
(``net.weights_source = "random test fixture"``).
"""
import math
import os
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

EDSR_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _conv(cin, cout, k=3):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class MeanShift(nn.Conv2d):
    """A fixed 1x1 conv that subtracts (sign=-1) or adds the RGB mean in [0, rgb_range]."""

    def __init__(self, rgb_range, sign):
        super().__init__(3, 3, 1)
        self.weight.data.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.bias.data.copy_(sign * rgb_range * torch.tensor(EDSR_RGB_MEAN))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    def __init__(self, feats):
        super().__init__()
        self.body = nn.Sequential(_conv(feats, feats), nn.ReLU(True), _conv(feats, feats))

    def forward(self, x):
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR (baseline x4 by default); parameter names match EDSR-PyTorch checkpoints."""

    def __init__(self, n_resblocks=16, n_feats=64, scale=4, rgb_range=255.0):
        super().__init__()
        if scale & (scale - 1):
            raise ValueError(f"EDSR scale must be a power of 2, got {scale}")
        self.scale, self.rgb_range = scale, rgb_range
        self.sub_mean, self.add_mean = MeanShift(rgb_range, -1), MeanShift(rgb_range, 1)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats) for _ in range(n_resblocks)], _conv(n_feats, n_feats))
        up = []
        for _ in range(int(math.log2(scale))):
            up += [_conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(nn.Sequential(*up), _conv(n_feats, 3))

    def perturbable(self):
        return [f"body.{i}.body.{j}.weight" for i in range(len(self.body) - 1) for j in (0, 2)]

    def forward(self, x, pre="none", body="none", rng=None):
        """``x`` in [0, rgb_range]; ``pre``/``body`` name the activation distortions."""
        rng = rng or random.Random()
        x = self.head(self.sub_mean(x))
        if pre == "swap":
            perm = torch.arange(x.shape[1], device=x.device)
            for _ in range(5):
                a, b = rng.randrange(x.shape[1]), rng.randrange(x.shape[1])
                perm[[a, b]] = perm[[b, a]]
            x = x[:, perm]
        elif pre == "drop":
            x = x * (torch.rand_like(x) >= 0.05)
        elif pre == "negate":
            x = x * torch.where(torch.rand_like(x) < 0.025, -1.0, 1.0)
        blocks = list(self.body)
        if body == "skip":
            skip = {rng.randint(2, len(blocks) - 2) for _ in range(3)} if len(blocks) > 3 else set()
            blocks = [m for i, m in enumerate(blocks) if i not in skip]
        res = nn.Sequential(*blocks[:5])(x)
        if body == "negate":
            res = -res
        elif body == "activate":
            res = F.relu(res) if rng.random() < 1 / 3 else F.gelu(res)
        elif body == "flip":
            res = torch.flip(res, [1, rng.choice((2, 3))])
        res = nn.Sequential(*blocks[5:])(res)
        return self.add_mean(self.tail(res + x))


def _pad_conv(cin, cout, k, stride, pad):
    return [nn.ZeroPad2d(pad), nn.Conv2d(cin, cout, k, stride)]


def _cae_block(c):
    return nn.Sequential(*_pad_conv(c, c, 3, 1, 1), nn.LeakyReLU(), *_pad_conv(c, c, 3, 1, 1))


class CAE(nn.Module):
    """The compressive autoencoder of the DeepAugment reference (32-channel binary latent at
    1/4 resolution); parameter names match its checkpoint. ``width`` scales it for tests."""

    def __init__(self, width=128):
        super().__init__()
        w, h = width, width // 2
        self.e_conv_1 = nn.Sequential(*_pad_conv(3, h, 5, 2, (1, 2, 1, 2)), nn.LeakyReLU())
        self.e_conv_2 = nn.Sequential(*_pad_conv(h, w, 5, 2, (1, 2, 1, 2)), nn.LeakyReLU())
        self.e_block_1, self.e_block_2, self.e_block_3 = _cae_block(w), _cae_block(w), _cae_block(w)
        self.e_conv_3 = nn.Sequential(nn.Conv2d(w, 32, 5, 1, 2), nn.Tanh())
        self.d_up_conv_1 = nn.Sequential(nn.Conv2d(32, h, 3), nn.LeakyReLU(), nn.ZeroPad2d(1),
                                         nn.ConvTranspose2d(h, w, 2, 2))
        self.d_block_1, self.d_block_2, self.d_block_3 = _cae_block(w), _cae_block(w), _cae_block(w)
        self.d_up_conv_2 = nn.Sequential(nn.Conv2d(w, 32, 3), nn.LeakyReLU(), nn.ZeroPad2d(1),
                                         nn.ConvTranspose2d(32, 2 * w, 2, 2))
        self.d_up_conv_3 = nn.Sequential(nn.Conv2d(2 * w, 16, 3), nn.LeakyReLU(), nn.ReflectionPad2d(2),
                                         nn.Conv2d(16, 3, 3), nn.Tanh())

    def perturbable(self):
        return ["e_conv_3.0.weight", "d_up_conv_1.0.weight", "d_block_1.1.weight", "d_block_1.4.weight",
                "d_block_2.1.weight", "d_block_2.4.weight", "d_block_3.1.weight"]

    def forward(self, x, latent="none", rng=None):
        """``x`` in [0, 1], height and width multiples of 4; output in [-1, 1]."""
        rng = rng or random.Random()
        e = self.e_conv_2(self.e_conv_1(x))
        for block in (self.e_block_1, self.e_block_2, self.e_block_3):
            e = block(e) + e
        z = _distort_latent(self.e_conv_3(e), latent, rng)
        bit = torch.where(torch.rand_like(z) <= (1 + z) / 2, 1.0, -1.0)  # stochastic binarization
        code = (bit + 1) / 2
        if latent == "scale":
            code = code * (3 + 4 * rng.random() * torch.rand_like(code))
        y = self.d_up_conv_1(code * 2 - 1)
        for block in (self.d_block_1, self.d_block_2, self.d_block_3):
            y = block(y) + y
        return self.d_up_conv_3(self.d_up_conv_2(y))


def _channel_mix(z, taps):
    """3x3 convolution mixing the latent's channels with kernel ``taps`` (C x C x 3 x 3)."""
    return F.conv2d(z, taps.to(z), padding=1)


def _distort_latent(z, option, rng):
    c, h, w = z.shape[1:]
    if option == "drop":
        return z * (torch.rand(h, w, device=z.device) > 0.2)
    if option == "negate":
        return z * torch.where(torch.rand(h, w, device=z.device) > 0.1, 1.0, -1.0)
    if option == "permute":
        k = min(10, c)
        return z[:, torch.tensor(rng.sample(range(k), k) + list(range(k, c)), device=z.device)]
    if option == "flip_some":
        z = z.clone()
        dims = rng.sample([1, 2], rng.randint(1, 2))
        for ch in (rng.randrange(c) for _ in range(5)):
            z[:, ch] = torch.flip(z[:, ch], dims)
        return z
    if option == "flip_all":
        half = c // 2
        return torch.cat([torch.flip(z[:, :half], [2]), torch.flip(z[:, half:], [3])], 1)
    eye = torch.zeros(c, c, 3, 3)
    if option == "mix_noise":
        eye[range(c), range(c), 1, 1] = 1
        return _channel_mix(z, eye + (torch.rand(c, c, 3, 3) - 0.5) * 0.2)
    if option == "mix_taps":
        eye[range(c), range(c), 1, 1] = 1
        for j in range(c):
            if rng.random() < 0.5:
                eye[j, rng.randrange(c), rng.randrange(3), rng.randrange(3)] = 1
        return _channel_mix(z, eye)
    if option == "shift":
        dy, dx = rng.randrange(3), rng.randrange(3)
        for j in range(c):
            if rng.random() < 0.2:
                dy, dx = rng.randrange(3), rng.randrange(3)
            eye[j, j, dy, dx] = 1
        return _channel_mix(z, eye)
    return z


LATENT_OPTIONS = ("scale", "drop", "negate", "permute", "flip_some", "flip_all", "mix_noise", "mix_taps", "shift")
PRE_OPTIONS = ("swap", "drop", "negate", "none")
BODY_OPTIONS = ("negate", "activate", "flip", "skip", "none")

_LAPLACIAN = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
_EDGE = torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]])


def _rows(w, rng, count):
    return list({rng.randrange(w.shape[0]) for _ in range(count)})


def _keep_max(w):
    flat = w.flatten(2)
    top = flat.topk(1, dim=2)
    return torch.zeros_like(flat).scatter(2, top.indices, top.values).view_as(w)


def _shift_mix(w, rng):
    z = torch.zeros(w.shape[1], w.shape[1], 3, 3)
    for j in range(w.shape[1]):
        z[:, j, rng.randrange(3), rng.randrange(3)] = rng.choice((1.0, -1.0))
    return F.conv2d(w, z.to(w), padding=1)


def perturb_weight(w, op, rng, noise=4.0):
    """One weight perturbation (``op``) of a conv weight (out x in x k x k); returns a new tensor."""
    w = w.clone()
    if op == "flip_filters":
        return torch.flip(w, [0])
    if op == "negate":
        return -w
    if op == "zero_filters":
        w[_rows(w, rng, 25)] = 0
        return w
    if op == "neg_gelu":
        return -F.gelu(w)
    if op in ("laplacian", "edge"):
        return w * (_LAPLACIAN if op == "laplacian" else _EDGE).to(w)
    if op == "scale_noise":
        return w * (1 + noise * rng.random() * torch.rand_like(w))
    if op == "add_noise":
        return w + (torch.rand_like(w) - 0.5)
    if op == "rot90":
        return torch.rot90(w, rng.randint(1, 3), (2, 3))
    if op == "sign_mask":
        return w * (torch.randint_like(w, 2) * 2 - 1)
    if op == "keep_mask":
        return w * torch.randint_like(w, 2)
    if op == "negate_filters":
        w[_rows(w, rng, w.shape[0] // 2)] *= -1
        return w
    if op == "keep_max":
        return _keep_max(w)
    if op == "shift_mix":
        return _shift_mix(w, rng)
    raise ValueError(f"unknown weight perturbation {op!r}")


WEIGHT_OPS = ("flip_filters", "negate", "zero_filters", "neg_gelu", "laplacian", "edge", "scale_noise", "add_noise",
              "rot90", "sign_mask", "keep_mask", "negate_filters", "keep_max", "shift_mix")


def _applicable(w):
    square, k3 = w.shape[0] == w.shape[1], w.shape[-1] == 3
    return [op for op in WEIGHT_OPS if (k3 or op not in ("laplacian", "edge", "shift_mix"))
            and (square or op != "shift_mix")]


def perturbed_state(net, rng, n_ops, noise):
    """The net's parameters and buffers with ``n_ops`` random perturbations of its perturbable weights."""
    state = dict(net.named_parameters()) | dict(net.named_buffers())
    for _ in range(n_ops):
        name = rng.choice(net.perturbable())
        state[name] = perturb_weight(state[name], rng.choice(_applicable(state[name])), rng, noise)
    return state


def load_weights(net, path, what):
    """Load ``path`` (safetensors, or a torch state dict read with weights_only=True) into ``net``."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"DeepAugment needs the pretrained {what} weights, and {path!r} is not a file. Pass the file "
            "(EDSR: edsr_baseline_x4.pt from EDSR-PyTorch; CAE: model_final.state from the DeepAugment "
            "reference; .safetensors of either also work); random weights are never used in their place.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.weights_source = path
    return net


class DeepAugment(nn.Module):
    """``DeepAugment(edsr, cae)(x)``: a distorted copy of the batch ``x`` (N x 3 x H x W, [0, 1]).

    Each call picks one of the given nets at random, fresh perturbed weights and one
    activation distortion. Nets must carry ``weights_source`` (set by :func:`load_weights`).
    """

    def __init__(self, edsr=None, cae=None, seed=0):
        super().__init__()
        nets = {"edsr": edsr, "cae": cae}
        for name, net in nets.items():
            if net is not None and not getattr(net, "weights_source", None):
                raise ValueError(f"the {name} net has no loaded weights: build DeepAugment with "
                                 "DeepAugment.from_files(...) (random weights are only for tests, marked "
                                 "with net.weights_source)")
        if edsr is None and cae is None:
            raise ValueError("DeepAugment needs an EDSR net, a CAE net, or both")
        self.edsr, self.cae = edsr, cae
        self.rng = random.Random(seed)
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, edsr_path=None, cae_path=None, device="cpu", seed=0):
        if not edsr_path and not cae_path:
            raise ValueError("DeepAugment needs EDSR and/or CAE weight files (--deepaugment-edsr, --deepaugment-cae)")
        edsr = load_weights(EDSR(), edsr_path, "EDSR").to(device) if edsr_path else None
        cae = load_weights(CAE(), cae_path, "CAE").to(device) if cae_path else None
        return cls(edsr, cae, seed).eval()

    @torch.no_grad()
    def forward(self, x):
        nets = [n for n in ("edsr", "cae") if getattr(self, n) is not None]
        if self.rng.choice(nets) == "edsr":
            return self._edsr(x)
        return self._cae(x)

    def _edsr(self, x):
        net = self.edsr
        h, w = x.shape[-2:]
        low = F.interpolate(x, size=(-(-h // net.scale), -(-w // net.scale)), mode="bilinear", antialias=True)
        out = functional_call(net, perturbed_state(net, self.rng, 3, 4.0), (low * net.rgb_range,),
                              dict(pre=self.rng.choice(PRE_OPTIONS), body=self.rng.choice(BODY_OPTIONS), rng=self.rng))
        return _resize(out.clamp(0, net.rgb_range) / net.rgb_range, h, w)

    def _cae(self, x):
        h, w = x.shape[-2:]
        inp = _resize(x, -(-h // 4) * 4, -(-w // 4) * 4)
        out = functional_call(self.cae, perturbed_state(self.cae, self.rng, 1, 8.0), (inp,),
                              dict(latent=self.rng.choice(LATENT_OPTIONS + ("none",)), rng=self.rng))
        return _resize(out.clamp(0, 1), h, w)


def _resize(x, h, w):
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True).clamp(0, 1)
