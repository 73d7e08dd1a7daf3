"""Training precision: what ``--precision auto`` resolves to (bf16 autocast on CUDA and on a CPU
that computes bf16 natively, fp32 elsewhere), and a bf16 training step on CPU against the same
step in float64, within bf16's own error.

bf16's error, derived, not tuned: bf16 keeps 8 significand bits, so rounding to it errs by at most
u = 2**-8 relative. Under autocast a convolution or linear layer rounds both operands to bf16 and
accumulates in fp32: its output errs by at most 2u relative (first order). A forward through L
such layers errs by at most 2uL relative; a gradient goes through the forward and then back
through the same L layers in bf16: 4uL. The tests count L in the model (its Conv2d and Linear
layers) and compare in norm, relative to the float64 step.
"""
import contextlib
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from fastnofrost.attacks import PGD, PRECISIONS
from fastnofrost.config import TrainConfig
from fastnofrost.data import build_loader
from fastnofrost.device import cpu_bf16
from fastnofrost.methods import build_method
from fastnofrost.models import create_model
from fastnofrost.nn import group_weights, weight_group
from fastnofrost.training.engine import auto_precision, resolve

U = 2.0 ** -8  # bf16's unit roundoff


# ------------------------------------------------------------------ --precision auto

def fake_cpu(monkeypatch, avx512_bf16=False, amx=False, onednn=True):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)


@pytest.mark.parametrize("avx512_bf16, amx, onednn, expected, why", [
    (True, False, True, "bf16", "computes bf16 natively (AVX512-BF16)"),
    (True, True, True, "bf16", "computes bf16 natively (AMX + AVX512-BF16)"),
    (False, False, True, "fp32", "no AVX512-BF16 or AMX"),       # AVX-512 without BF16: oneDNN emulates
    (True, False, False, "fp32", "oneDNN may not use bf16"),     # e.g. ONEDNN_MAX_CPU_ISA=AVX2
])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, avx512_bf16, amx, onednn, expected, why):
    fake_cpu(monkeypatch, avx512_bf16, amx, onednn)
    precision, said = auto_precision(torch.device("cpu"))
    assert precision == expected and why in said
    assert resolve(TrainConfig(), torch.device("cpu")).precision == expected
    # an explicit precision is kept on every CPU, and says so
    pinned = resolve(TrainConfig(precision="fp32"), torch.device("cpu"))
    assert (pinned.precision, pinned.why) == ("fp32", "--precision fp32")


def test_auto_is_bf16_on_cuda_whatever_the_cpu(monkeypatch):
    fake_cpu(monkeypatch)
    assert auto_precision(torch.device("cuda")) == ("bf16", "auto: bf16 autocast on CUDA")


def test_evaluation_stays_fp32_on_a_cpu_with_native_bf16(monkeypatch, tmp_path):
    """Robustness numbers are reported in fp32: evaluation's default does not follow auto."""
    from fastnofrost.evaluate import parse_args
    from fastnofrost.evaluation.attacks import AttackSettings

    fake_cpu(monkeypatch, avx512_bf16=True, amx=True)
    assert auto_precision(torch.device("cpu"))[0] == "bf16"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert parse_args(["--model", "nf_resnet26_small", "--checkpoint", str(weights), "--data", "digits"]).precision \
        == "fp32"
    assert AttackSettings().precision == "fp32"


def test_onednn_capped_below_avx512_has_no_native_bf16():
    """ONEDNN_MAX_CPU_ISA=AVX2 (read by oneDNN at its first use, so in a fresh process): no
    native bf16, whatever the CPU. On a host with AVX512-BF16 this is the real oneDNN check."""
    code = ("import torch; from fastnofrost.device import cpu_bf16; "
            "from fastnofrost.training.engine import auto_precision; "
            "print(cpu_bf16(), auto_precision(torch.device('cpu'))[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "fp32"]


def test_this_host_reports_what_torch_sees():
    """cpu_bf16() names exactly the bf16 instructions torch's CPU probe finds (None without)."""
    found = {"AMX": torch.cpu._is_amx_tile_supported(), "AVX512-BF16": torch.cpu._is_avx512_bf16_supported()}
    native = cpu_bf16()
    if native is None:
        assert not any(found.values()) or not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    else:
        assert set(native.split(" + ")) == {name for name, has in found.items() if has}


# ------------------------------------------------------------------ a bf16 step on CPU

@pytest.fixture(scope="module")
def batch():
    loader = build_loader("digits", batch_size=16, image_size=16, seed=0)
    loader.set_epoch(0)
    return next(iter(loader))


def rounding_layers(model: nn.Module) -> int:
    """L: the layers autocast runs in bf16 (convolutions and linear layers)."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def within(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """||a - b|| <= rel ||b|| (so a zero ``b``, e.g. a zero-initialized gain's gradient, needs a zero ``a``)."""
    a, b = a.double(), b.double()
    return bool((a - b).norm() <= rel * b.norm())


def training_step(method_name, model, x, y, bf16: bool, replay=None):
    """One step as train.py runs it: the attack under the run's precision (perturbation in fp32),
    the training forward under bf16 autocast (DeepSpeed's torch_autocast) or in float64, grouped
    WS cast once. ``replay``: the adversarial examples to use instead of attacking (the float64
    step takes the bf16 step's, so the two compare the same training loss: PGD's sign steps
    would turn rounding differences into different examples). Returns (loss, grads, x*)."""
    precision = "bf16" if bf16 else "fp32"
    method = build_method(method_name, PGD(eps=8 / 255, steps=2, precision=precision), smoothing=0.1)
    attacked = []
    if replay is not None:
        method.attack = lambda module, xs, ys, **kw: replay[len(attacked)].to(xs.dtype)
    else:
        attack = method.attack
        method.attack = lambda *a, **kw: attacked.append(attack(*a, **kw)) or attacked[-1]

    def forward(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(inputs)

    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    group = weight_group(model)
    with group.step("one", cast=PRECISIONS[precision]) if group is not None else contextlib.nullcontext():
        out = method(forward, model, x, y)
        out.loss.backward()
    return out.loss.detach(), [p.grad for p in model.parameters()], attacked


@pytest.mark.parametrize("method_name, model_name", [("nofrost", "nf_resnet26_small"),
                                                      ("trades", "nf_resnet26_small"),
                                                      ("mbnat", "resnet26_dualbn_small")])
def test_a_bf16_step_is_the_float64_step_within_bf16_error(method_name, model_name, batch, one_thread):
    x, y = batch
    model = create_model(model_name, num_classes=10, width=0.25).train()
    exact = copy.deepcopy(model).double()
    for m in (model, exact):
        group_weights(m)
    loss, grads, attacked = training_step(method_name, model, x, y, bf16=True)
    loss64, grads64, _ = training_step(method_name, exact, x.double(), y, bf16=False, replay=attacked)
    layers = rounding_layers(model)
    assert attacked and all(a.dtype == torch.float32 for a in attacked)  # the perturbation stays fp32
    assert within(loss, loss64, 2 * U * layers)
    for g, g64 in zip(grads, grads64):
        assert g.dtype == torch.float32  # fp32 master gradients
        assert within(g, g64, 4 * U * layers)


def test_the_bf16_attack_gradient_is_the_float64_one_within_bf16_error(batch, one_thread):
    """The attack's input gradient (what PGD's sign step reads) under bf16 autocast is float64's
    within 4uL in norm."""
    x, y = batch
    model = create_model("nf_resnet26_small", num_classes=10, width=0.25).eval()
    exact = copy.deepcopy(model).double()
    bound = 4 * U * rounding_layers(model)
    grads = []
    for m, xs, bf16 in ((model, x, True), (exact, x.double(), False)):
        xs = xs.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(m(xs).float(), y, reduction="sum")
        grads.append(torch.autograd.grad(loss, xs)[0].double())
    assert within(*grads, bound)
