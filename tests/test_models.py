"""Models: NF-ResNets exact to timm, BN / IN / dual-BN baselines, registry, safe checkpoint
loading, convert_timm, channels_last and torch.compile.

Key equality with timm: our state_dict is timm's, in the same order, plus the two
input-normalization buffers ``normalize.mean`` / ``normalize.std`` (NORMALIZE_KEYS).
"""
import warnings

import pytest
import torch
import torch.nn as nn

import fastnofrost  # noqa: F401
from fastnofrost.models import create_model, list_models, load_checkpoint
from fastnofrost.models.normalize import IMAGENET_MEAN, IMAGENET_STD
from fastnofrost.nn import DualBatchNorm2d, convert_timm, set_bn_mode

timm = pytest.importorskip("timm")

NORMALIZE_KEYS = ("normalize.mean", "normalize.std")
# (keys, parameters) of timm's models; the NF and BN ResNets share parameter counts.
TIMM_SIZES = {"nf_resnet26": (89, 15_995_176), "nf_resnet50": (161, 25_557_032),
              "resnet26": (176, 15_995_176), "resnet50": (320, 25_557_032)}
FAMILIES = ["nf_resnet26_small", "resnet26_small", "resnet26_in_small", "resnet26_dualbn_small"]


def without_normalize(state):
    return {k: v for k, v in state.items() if k not in NORMALIZE_KEYS}


def randomize_gains(model):
    """timm's init starts every residual branch at zero (last gain 0); redraw the gains so
    the branches carry signal and an equality test covers them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.uniform_(0.5, 1.5)
    return model


def tiny(name, **kw):
    return create_model(name, num_classes=10, width=0.25, **kw)


def assert_logits_close(ours, ref):
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * max(scale, 1e-3))


# ---------------------------------------------------------------- registry and arguments

def test_list_models():
    names = list_models()
    for name in ["nf_resnet26", "nf_resnet50", "nf_resnet26_small", "resnet26", "resnet50", "resnet50_in",
                 "resnet50_dualbn", "resnet26_small"]:
        assert name in names
    assert names == sorted(names)


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match="unknown model 'nf_resnet18'.*nf_resnet26"):
        create_model("nf_resnet18")


def test_unknown_argument():
    with pytest.raises(TypeError, match="unexpected argument.*depth_mult.*accepted.*width"):
        create_model("nf_resnet26_small", depth_mult=2)


@pytest.mark.parametrize("kw, match", [
    (dict(drop_rate=1.0), "drop_rate must be a number in \\[0, 1\\)"),
    (dict(drop_rate=-0.1), "drop_rate must be a number in \\[0, 1\\)"),
    (dict(drop_path_rate=1.5), "drop_path_rate must be a number in \\[0, 1\\)"),
    (dict(width=0), "width must be a number > 0"),
    (dict(num_classes=0), "num_classes must be an integer >= 1"),
    (dict(in_chans=1, mean=(0.5, 0.5, 0.5)), "mean needs one value per input channel"),
    (dict(std=(0.2, 0.0, 0.2)), "std must be > 0"),
])
@pytest.mark.parametrize("name", ["nf_resnet26_small", "resnet26_small"])
def test_bad_arguments(name, kw, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kw)


# ---------------------------------------------------------------- exact to timm

@pytest.mark.parametrize("name", list(TIMM_SIZES))
def test_keys_shapes_params_init_equal_timm(name):
    """Same keys in the same order, same shapes and counts; a build seeded like timm's draws
    bitwise the same initial weights (architecture + init identical)."""
    torch.manual_seed(0)
    ref = timm.create_model(name)
    torch.manual_seed(0)
    ours = create_model(name)
    ref_state, state = ref.state_dict(), ours.state_dict()
    assert [k for k in state if k not in NORMALIZE_KEYS] == list(ref_state)
    assert all(k in state for k in NORMALIZE_KEYS)
    n_keys, n_params = TIMM_SIZES[name]
    assert len(ref_state) == n_keys
    assert sum(p.numel() for p in ours.parameters()) == n_params
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key


def test_width_matches_timm_width_factor():
    torch.manual_seed(0)
    ref = timm.create_model("nf_resnet26", width_factor=0.25, num_classes=10)
    torch.manual_seed(0)
    ours = create_model("nf_resnet26", width=0.25, num_classes=10)
    ref_state = ref.state_dict()
    state = without_normalize(ours.state_dict())
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], v) for k, v in ref_state.items())


@pytest.mark.parametrize("name", ["nf_resnet26", "nf_resnet50"])
def test_logits_and_input_grad_equal_timm(name):
    """timm's weights (its own init, gains redrawn) loaded into ours: eval-mode logits agree
    to fp32 rounding; the input gradient an attack uses agrees too (checked in float64,
    where rounding cannot flip a max-pool or ReLU decision between the two models)."""
    ref = randomize_gains(timm.create_model(name)).eval()
    ours = create_model(name).eval()
    result = load_checkpoint(ours, ref.state_dict())
    assert result.missing == [] and result.unexpected == []
    assert result.kept_normalization == list(NORMALIZE_KEYS)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert_logits_close(ours(x), ref((x - mean) / std))

    ours, ref, x = ours.double(), ref.double(), x.double().requires_grad_()
    (grad,) = torch.autograd.grad(ours(x)[:, 0].sum(), x)
    (ref_grad,) = torch.autograd.grad(ref((x - mean.double()) / std.double())[:, 0].sum(), x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-9 * ref_grad.abs().max().item())


# ---------------------------------------------------------------- small inputs, normalization

@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("in_chans, size", [(1, 28), (3, 32)])
def test_small_inputs(name, in_chans, size):
    model = tiny(name, in_chans=in_chans)
    x = torch.rand(4, in_chans, size, size)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.forward_features(x).shape[-1] == -(-size // 8)  # stem stride 1, three stride-2 stages


def test_input_normalization():
    model = tiny("nf_resnet26_small", in_chans=1).eval()
    assert model.normalize.mean.tolist() == [0.5] and model.normalize.std.tolist() == [0.5]
    model = tiny("nf_resnet26_small", mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261)).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)) / torch.tensor(
        [0.247, 0.243, 0.261]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), expected)
    # absent from a checkpoint: the model keeps its own; present: they load
    load_checkpoint(model, without_normalize(tiny("nf_resnet26_small").state_dict()))
    assert model.normalize.std.tolist() == pytest.approx([0.247, 0.243, 0.261])
    load_checkpoint(model, tiny("nf_resnet26_small").state_dict())
    assert model.normalize.std.tolist() == pytest.approx(list(IMAGENET_STD))


# ---------------------------------------------------------------- checkpoints

def assert_same_weights(model, state):
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


@pytest.fixture
def timm_small():
    return timm.create_model("nf_resnet26", width_factor=0.25, num_classes=10)


@pytest.mark.parametrize("layout", ["timm", "official_ddp", "ours", "deepspeed", "compiled", "safetensors"])
def test_checkpoint_formats(tmp_path, timm_small, layout):
    state = timm_small.state_dict()
    path = tmp_path / "ckpt.pth"
    if layout == "timm":
        torch.save(state, path)
    elif layout == "official_ddp":  # the official NoFrost checkpoints: DataParallel keys
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif layout == "ours":
        optimizer = torch.optim.SGD(timm_small.parameters(), lr=0.1, momentum=0.9)
        torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 3, "args": {"lr": 0.1}}, path)
    elif layout == "deepspeed":
        torch.save({"module": state, "ds_version": "0.16", "global_steps": 10}, path)
    elif layout == "compiled":
        torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_model("nf_resnet26", width=0.25, num_classes=10)
    result = load_checkpoint(model, path)
    assert result.missing == [] and result.unexpected == []
    assert_same_weights(model, state)


def test_pretrained_path_and_own_round_trip(tmp_path):
    model = tiny("resnet26_dualbn_small", mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    path = tmp_path / "ours.pt"
    torch.save({"model": model.state_dict(), "epoch": 1}, path)
    loaded = create_model("resnet26_dualbn_small", num_classes=10, width=0.25, pretrained_path=str(path))
    assert_same_weights(loaded, model.state_dict())


def test_checkpoint_key_and_shape_errors(tmp_path):
    model = tiny("nf_resnet26_small")
    state = model.state_dict()
    broken = {k: v for k, v in state.items() if k != "head.fc.bias"}
    broken["head.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"1 missing key\(s\) \[head.fc.bias\], 1 unexpected key\(s\) "
                                           r"\[head.extra.weight\]"):
        load_checkpoint(model, broken)
    with pytest.warns(UserWarning, match="missing key"):
        result = load_checkpoint(model, broken, strict=False)
    assert result.missing == ["head.fc.bias"] and result.unexpected == ["head.extra.weight"]
    with pytest.raises(ValueError, match=r"shape mismatch.*head.fc.weight \(5, 512\) vs model \(10, 512\)"):
        load_checkpoint(model, {**state, "head.fc.weight": torch.zeros(5, 512)})
    with pytest.raises(ValueError, match="not a state dict: entry 'note' holds str"):
        load_checkpoint(model, {"model": {**state, "note": "hello"}})
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(model, tmp_path / "missing.pth")


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pickle_is_refused(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = tiny("nf_resnet26_small").state_dict()
    torch.save({"model": state, "extra": _Payload(marker)}, path, _use_new_zipfile_serialization=zipfile)
    model = tiny("nf_resnet26_small")
    with pytest.raises(RuntimeError, match="refusing to load .*evil.pth.*could run code"):
        load_checkpoint(model, path)
    assert not marker.exists()
    # the payload is live: a trusting load runs it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


# ---------------------------------------------------------------- dual BN

def test_dual_bn_routing_and_gamma_endpoints():
    model = tiny("resnet26_dualbn_small")
    dual = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    assert dual and all(m.mode == "clean" for m in dual)
    state = model.state_dict()
    assert "bn1.clean.running_mean" in state and "bn1.adv.running_mean" in state and "bn1.weight" not in state
    with torch.no_grad():  # distinct affine parameters per branch
        for m in dual:
            m.adv.weight.uniform_(0.5, 1.5), m.adv.bias.uniform_(-0.2, 0.2)
    model.train()
    x = torch.rand(8, 3, 32, 32)
    before = {name: m.adv.running_mean.clone() for name, m in model.named_modules() if isinstance(m, DualBatchNorm2d)}
    model(x)  # clean branch only
    assert all(torch.equal(m.adv.running_mean, before[n]) for n, m in model.named_modules() if n in before)
    set_bn_mode(model, "adv")
    model(x.flip(0) * 0.5 + 0.25)  # adversarial-like batch: different statistics
    assert all(not torch.equal(m.adv.running_mean, before[n]) for n, m in model.named_modules() if n in before)
    set_bn_mode(model, "mix", gamma=0.5)
    with pytest.raises(RuntimeError, match="evaluation only"):
        model(x)

    model.eval()
    outputs = {}
    with torch.no_grad():
        for mode in ("clean", "adv"):
            set_bn_mode(model, mode)
            outputs[mode] = model(x)
        for gamma in (0.0, 0.5, 1.0):
            set_bn_mode(model, "mix", gamma=gamma)
            outputs[gamma] = model(x)
    torch.testing.assert_close(outputs[0.0], outputs["clean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outputs[1.0], outputs["adv"], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(outputs["clean"], outputs["adv"])
    assert not torch.allclose(outputs[0.5], outputs["clean"]) and not torch.allclose(outputs[0.5], outputs["adv"])


@pytest.mark.parametrize("mode, gamma, match", [
    ("mix", 1.5, "gamma in \\[0, 1\\]"), ("mix", None, "gamma in \\[0, 1\\]"), ("both", None, "must be one of"),
    ("adv", 0.3, "only used by BN mode 'mix'"),
])
def test_bn_mode_errors(mode, gamma, match):
    with pytest.raises(ValueError, match=match):
        set_bn_mode(tiny("resnet26_dualbn_small"), mode, gamma)


def test_bn_mode_needs_dual_bn():
    with pytest.raises(ValueError, match="has no DualBatchNorm2d"):
        set_bn_mode(tiny("resnet26_small"), "adv")


# ---------------------------------------------------------------- dropout / drop-path

@pytest.mark.parametrize("name", ["nf_resnet26_small", "resnet26_in_small"])
@pytest.mark.parametrize("rates", [dict(drop_rate=0.5), dict(drop_path_rate=0.5)])
def test_drop_path_and_dropout_off_in_eval(name, rates):
    model = tiny(name, **rates)
    with torch.no_grad():  # open the residual branches (zero-initialized) so drop-path has something to drop
        for key, p in model.named_parameters():
            if key.endswith(("gain", "bn3.weight")):
                p.uniform_(0.5, 1.5)
    plain = tiny(name)
    plain.load_state_dict(model.state_dict())
    stages = model.stages if hasattr(model, "stages") else [getattr(model, f"layer{i}") for i in range(1, 5)]
    rates_per_block = [getattr(block.drop_path, "p", 0.0) for stage in stages for block in stage]
    expected_last = rates.get("drop_path_rate", 0.0)
    assert rates_per_block[0] == 0.0 and rates_per_block[-1] == pytest.approx(expected_last)
    assert rates_per_block == sorted(rates_per_block)  # linear in depth
    x = torch.rand(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        model.train()
        assert not torch.allclose(model(x), model(x))  # stochastic while training


# ---------------------------------------------------------------- convert_timm

def test_convert_timm_nfnet_family():
    """Scaled and SAME-padded layers (DeepMind NFNet), static and input-size dependent padding."""
    models = [timm.create_model("nf_resnet26", width_factor=0.25, num_classes=10),
              timm.create_model("dm_nfnet_f0", depths=(1, 1, 1, 1), width_factor=0.25, group_size=16,
                                num_classes=10)]
    for model in models:
        randomize_gains(model).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("skipinit_gain"):
                    p.fill_(1.0)
        keys = list(model.state_dict())
        params = {name: p for name, p in model.named_parameters()}
        x = torch.rand(2, 3, 64, 61)  # odd width: dynamic SAME padding is asymmetric
        with torch.no_grad():
            expected = model(x)
            assert convert_timm(model) is model
            out = model(x)
        timm_layers = (timm.layers.ScaledStdConv2d, timm.layers.ScaledStdConv2dSame)
        assert not any(isinstance(m, timm_layers) for m in model.modules())
        assert list(model.state_dict()) == keys
        assert all(p is params[name] for name, p in model.named_parameters())
        assert_logits_close(out, expected)


def test_convert_timm_std_conv():
    layers = nn.Sequential(timm.layers.StdConv2d(3, 8, 3, stride=2), nn.ReLU(),
                           timm.layers.StdConv2dSame(8, 8, 3, stride=2), nn.ReLU(),
                           timm.layers.StdConv2dSame(8, 4, 3))
    x = torch.rand(2, 3, 17, 20)
    with torch.no_grad():
        expected = layers(x)
        converted = convert_timm(layers)
        assert_logits_close(converted(x), expected)
    assert type(converted[0]).__name__ == "StdConv2d" and converted[0].__module__.startswith("fastnofrost")
    single = convert_timm(timm.layers.ScaledStdConv2d(3, 8, 3, gamma=2.0, eps=1e-5))
    assert single.__module__.startswith("fastnofrost") and single.eps == 1e-5


# ---------------------------------------------------------------- channels_last, torch.compile

@pytest.mark.parametrize("name", FAMILIES + ["nf_resnet26"])
def test_channels_last_and_compile(name):
    """Every family under channels_last, eager and compiled (fullgraph: no graph break,
    fake kernels and autograd traced), forward and backward. In float64: with a batch of 2 a
    BN layer at 1x1 resolution amplifies float32 rounding until a ReLU flips, and the
    gradients then differ for real (seen for about 1 seed in 100 in float32)."""
    torch._dynamo.reset()
    model = tiny(name).double()
    size = 64 if name == "nf_resnet26" else 32
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    if name.endswith("dualbn_small"):
        set_bn_mode(model, "adv")
    expected = model(x)
    expected.sum().backward()
    grads = [p.grad for p in model.parameters()]  # None for the idle dual-BN branch
    model.zero_grad(set_to_none=True)

    model = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = model(x_cl)
    assert_logits_close(out, expected.detach())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x_cl)
    assert_logits_close(out, expected.detach())
    out.sum().backward()
    for p, g in zip(model.parameters(), grads):
        if g is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-10 * max(g.abs().max().item(), 1e-3))


def test_inductor_compile_nf_resnet():
    torch._dynamo.reset()
    model = tiny("nf_resnet26_small")
    x = torch.rand(2, 3, 32, 32)
    expected = model(x)
    (grad,) = torch.autograd.grad(expected.sum(), model.head.fc.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.compile(model, fullgraph=True)(x)
    assert_logits_close(out, expected.detach())
    (compiled_grad,) = torch.autograd.grad(out.sum(), model.head.fc.weight)
    torch.testing.assert_close(compiled_grad, grad, rtol=1e-4, atol=1e-5)
