#!/usr/bin/python3
"""make_golden_muon.py: writes tests/data/golden_muon.json, the reference that
tests/model/test_golden_muon.cpp checks the Muon recipes against (hiverge and muon94 presets).

It imports the peers' own code, unchanged: shared/peers/cifar10-speedrun/cifar10_speedrun.py
(hiverge) and shared/peers/cifar10-airbench/airbench94_muon.py, and builds each network from the
peer's classes (its ConvGroup, BatchNorm, Conv; the whitening conv, GELU, MaxPool2d(3) and the head
as its CifarNet.__init__ does) with small widths, binding the peer's own CifarNet methods
(reset: PyTorch init, dirac, head rescaled to std 1; init_whiten; forward with head / width).
In fp32 on the CPU. On a fixed batch it records the parameters, logits and summed label-smoothed
loss in training mode, every gradient, the BN running statistics, and every tensor after each of
two steps of the peer's optimizers (its SGD param groups and its Muon class, with the learning
rates its main() sets at steps 0 and 1; the second step renormalises hiverge's weights).

Shims, none of which changes a number: torch 1.13 (Debian) has no torch.compile, so it is the
identity here; `fused=True` is dropped from SGD (same arithmetic). One that does: airbench94_muon
runs Newton-Schulz in bfloat16; here Tensor.bfloat16 returns fp32 while it runs, because we
compare an fp32 implementation. hiverge's fp16 momentum buffer is kept as the peer has it.

Needs python3 with torch and torchvision (Debian: python3-torch python3-torchvision).
Usage: tools/make_golden_muon.py [--peers ../shared/peers] [--out tests/data/golden_muon.json]
"""
import argparse
import importlib.util
import json
import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

if not hasattr(torch, "compile"):
    torch.compile = lambda f=None, **kw: (f if f is not None else (lambda g: g))

ap = argparse.ArgumentParser()
here = os.path.dirname(os.path.abspath(__file__))
ap.add_argument("--peers", default=os.path.join(here, "..", "..", "shared", "peers"))
ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden_muon.json"))
ap.add_argument("--widths", default="8,16,16")
args = ap.parse_args()
widths = [int(w) for w in args.widths.split(",")]


def load(rel, name):
    path = os.path.join(args.peers, rel)
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)  # classes only; the peers' main is guarded
    return m, os.path.relpath(path, os.path.join(here, ".."))


def small_net(peer):
    net = peer.CifarNet.__new__(peer.CifarNet)
    nn.Module.__init__(net)
    net.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    net.whiten.weight.requires_grad = False
    net.layers = nn.Sequential(nn.GELU(), peer.ConvGroup(24, widths[0]),
                               peer.ConvGroup(widths[0], widths[1]),
                               peer.ConvGroup(widths[1], widths[2]), nn.MaxPool2d(3))
    net.head = nn.Linear(widths[2], 10, bias=False)
    return net.float()


def name_of(k):
    k = k.replace("layers.1.", "block1.").replace("layers.2.", "block2.").replace("layers.3.", "block3.")
    return k


def ours(t):
    t = t.detach().float()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)  # OIHW -> OHWI
    return [float(v) for v in t.contiguous().view(-1)]


def floats(net):
    return {name_of(k): ours(v) for k, v in net.state_dict().items() if v.dtype == torch.float32}


def run(peer, src, cfg):
    torch.manual_seed(cfg["seed"])
    net = small_net(peer)
    net.reset()
    N = 8
    imgs = torch.rand(N, 3, 32, 32)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.247, 0.2435, 0.2616)).view(1, 3, 1, 1)
    x = (imgs - mean) / std
    labels = torch.tensor([3, 0, 9, 3, 1, 7, 5, 2])
    with torch.no_grad():
        net.init_whiten(x)
        for m in net.modules():  # non-zero BN biases make the check sharper
            if isinstance(m, peer.BatchNorm):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape))
    out = {"made_by": "tools/make_golden_muon.py from " + src, "N": N, "widths": widths,
           "total_steps": cfg["total"], "whiten_steps": cfg["whiten_steps"],
           "input_nhwc": [float(v) for v in x.permute(0, 2, 3, 1).contiguous().view(-1)],
           "labels": labels.tolist(), "params": floats(net)}

    bs, bias_lr, head_lr = cfg["batch"], cfg["bias_lr"], cfg["head_lr"]
    wd = cfg["wd"]
    filter_params = [p for p in net.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    opt1 = torch.optim.SGD([dict(params=[net.whiten.bias], lr=bias_lr, weight_decay=wd / bias_lr),
                            dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
                            dict(params=[net.head.weight], lr=head_lr, weight_decay=wd / head_lr)],
                           momentum=cfg["sgd_momentum"], nesterov=True)
    opt2 = cfg["make_muon"](filter_params)
    for o in (opt1, opt2):
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    total, wsteps = cfg["total"], cfg["whiten_steps"]
    net.train()
    for step in range(2):
        logits = net(x, whiten_bias_grad=step < wsteps)
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg["smoothing"], reduction="sum")
        loss.backward()
        if step == 0:
            out["logits"] = ours(logits)
            out["loss"] = float(loss)
            out["grads"] = {name_of(k): ours(p.grad) for k, p in net.named_parameters() if p.requires_grad}
            out["after_forward"] = {name_of(k): ours(v) for k, v in net.state_dict().items() if "running" in k}
        # the learning rates the peers' main() sets before each step
        opt1.param_groups[0]["lr"] = opt1.param_groups[0]["initial_lr"] * (1 - step / wsteps)
        for g in opt1.param_groups[1:] + opt2.param_groups:
            g["lr"] = g["initial_lr"] * (1 - step / total)
        for o in (opt1, opt2):
            o.step()
            o.zero_grad(set_to_none=True)
        out[f"after_step{step}"] = floats(net)
    return out


hv, hv_src = load("cifar10-speedrun/cifar10_speedrun.py", "hiverge_speedrun")


def hiverge_muon(params):
    wd = 1.0418e-06 * 1536
    m = hv.Muon(params, lr=0.205, momentum=0.655, nesterov=True, norm_freq=4, total_train_steps=243,
                weight_decay=wd)
    m.param_groups[0]["momentum_buffer_dtype"] = torch.half
    return m


mu, mu_src = load("cifar10-airbench/airbench94_muon.py", "airbench94_muon")
result = {"format": "speedrun-golden-muon", "version": 1, "torch": torch.__version__}
result["hiverge"] = run(hv, hv_src, dict(seed=1, total=243, whiten_steps=7, batch=1536, bias_lr=0.0573,
                                         head_lr=0.5415, wd=1.0418e-06 * 1536, sgd_momentum=0.825,
                                         smoothing=0.09, make_muon=hiverge_muon))
bf16 = torch.Tensor.bfloat16
torch.Tensor.bfloat16 = lambda self: self.float()
try:
    result["muon94"] = run(mu, mu_src, dict(seed=2, total=200, whiten_steps=75, batch=2000, bias_lr=0.053,
                                            head_lr=0.67, wd=2e-6 * 2000, sgd_momentum=0.85, smoothing=0.2,
                                            make_muon=lambda p: mu.Muon(p, lr=0.24, momentum=0.6, nesterov=True)))
finally:
    torch.Tensor.bfloat16 = bf16

os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(result, f)
print(f"wrote {args.out}: hiverge loss {result['hiverge']['loss']:.6f}, muon94 loss {result['muon94']['loss']:.6f}")
