#!/usr/bin/python3
"""make_golden.py: writes tests/data/golden_airbench.json (or, with --peer airbench96,
tests/data/golden_airbench96.json), the reference that tests/model/test_golden.cpp checks our
network against (as llm.c checks against PyTorch).

It imports the peer's own code, shared/peers/cifar10-airbench/legacy/airbench94.py (or
airbench96.py) unchanged, and builds the network from its classes (Conv with dirac init, BatchNorm
with eps 1e-12 and momentum 1 - 0.6 (airbench96: PyTorch's 0.1), ConvGroup (airbench96: 3 convs
and a residual), GELU, MaxPool2d(3), Linear without bias, Mul(1/9)) exactly as its make_net() does, but in fp32 on the CPU and with small widths so the file stays small. On a fixed
batch it records: the input, every parameter (OHWI for convs), the logits and the summed
label-smoothed loss in training mode, every gradient, the BN running statistics after the forward
pass, and the parameters after one step of the peer's optimizer (SGD Nesterov with its two param
groups, lr multiplier 0.2 of step 0) and one lookahead update with decay 0.5.

Needs python3 with torch and torchvision (Debian: python3-torch python3-torchvision).
Usage: tools/make_golden.py [--peers ../shared/peers] [--peer airbench94|airbench96] [--out FILE]
"""
import argparse
import importlib.util
import json
import os
import sys

import torch
from torch import nn

ap = argparse.ArgumentParser()
here = os.path.dirname(os.path.abspath(__file__))
ap.add_argument("--peers", default=os.path.join(here, "..", "..", "shared", "peers"))
ap.add_argument("--peer", default="airbench94", choices=["airbench94", "airbench96"])
ap.add_argument("--out", default=None)
ap.add_argument("--widths", default="8,16,16")
args = ap.parse_args()
if args.out is None:
    name = "golden_airbench.json" if args.peer == "airbench94" else "golden_airbench96.json"
    args.out = os.path.join(here, "..", "tests", "data", name)

path = os.path.join(args.peers, "cifar10-airbench", "legacy", args.peer + ".py")
spec = importlib.util.spec_from_file_location(args.peer, path)
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)  # defines hyp and the classes; main() is guarded

torch.manual_seed(0)
widths = [int(w) for w in args.widths.split(",")]
hyp = ab.hyp
if args.peer == "airbench94":
    group = lambda cin, cout: ab.ConvGroup(cin, cout, hyp["net"]["batchnorm_momentum"])
else:  # airbench96's ConvGroup takes no momentum (PyTorch's default BN momentum)
    group = ab.ConvGroup
net = nn.Sequential(
    ab.Conv(3, 24, 2, padding=0, bias=True),
    nn.GELU(),
    group(24, widths[0]),
    group(widths[0], widths[1]),
    group(widths[1], widths[2]),
    nn.MaxPool2d(3),
    ab.Flatten(),
    nn.Linear(widths[2], 10, bias=False),
    ab.Mul(hyp["net"]["scaling_factor"]),
).float()
net[0].weight.requires_grad = False

N = 4
imgs = torch.rand(N, 3, 32, 32)
mean, std = ab.CIFAR_MEAN.view(1, 3, 1, 1), ab.CIFAR_STD.view(1, 3, 1, 1)
x = (imgs - mean) / std
labels = torch.tensor([3, 0, 9, 3])
ab.init_whitening_conv(net[0], x)
with torch.no_grad():  # non-zero BN biases and whitening bias make the check sharper
    net[0].bias.copy_(0.1 * torch.randn(24))
    for m in net.modules():
        if isinstance(m, ab.BatchNorm):
            m.bias.copy_(0.1 * torch.randn(m.bias.shape))

def name_of(k):
    # peer name -> our tensor name
    k = {"0.weight": "whiten.weight", "0.bias": "whiten.bias"}.get(k, k)
    k = "head.weight" if k == "7.weight" else k
    for i, g in ((2, 1), (3, 2), (4, 3)):
        if k.startswith(f"{i}."):
            k = f"block{g}." + k[len(f"{i}."):]
    return k

def ours(t):
    t = t.detach().float()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)  # OIHW -> OHWI
    return [float(v) for v in t.contiguous().view(-1)]

out = {"format": "speedrun-golden", "version": 1, "peer": args.peer,
       "made_by": "tools/make_golden.py from " + os.path.relpath(path, os.path.join(here, "..")),
       "torch": torch.__version__, "widths": widths, "N": N,
       "input_nhwc": [float(v) for v in x.permute(0, 2, 3, 1).contiguous().view(-1)],
       "labels": labels.tolist()}
sd = net.state_dict()
out["params"] = {name_of(k): ours(v) for k, v in sd.items() if v.dtype == torch.float32}

net.train()
logits = net(x)
loss = nn.CrossEntropyLoss(label_smoothing=hyp["opt"]["label_smoothing"], reduction="none")(logits, labels).sum()
loss.backward()
out["logits"] = ours(logits)
out["loss"] = float(loss)
out["grads"] = {name_of(k): ours(p.grad) for k, p in net.named_parameters() if p.requires_grad}
out["after_forward"] = {name_of(k): ours(v) for k, v in net.state_dict().items() if "running" in k}

# one optimizer step, exactly as the peer's main() builds it
batch_size, momentum = hyp["opt"]["batch_size"], hyp["opt"]["momentum"]
kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
lr = hyp["opt"]["lr"] / kilostep_scale
wd = hyp["opt"]["weight_decay"] * batch_size / kilostep_scale
lr_biases = lr * hyp["opt"]["bias_scaler"]
norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
other_params = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
opt = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                       dict(params=other_params, lr=lr, weight_decay=wd / lr)],
                      momentum=momentum, nesterov=True)
ema = ab.LookaheadState(net)  # snapshot before the step
for g in opt.param_groups:
    g["lr"] *= 0.2  # LambdaLR multiplier at step 0
opt.step()
out["after_step"] = {name_of(k): ours(v) for k, v in net.state_dict().items() if v.dtype == torch.float32}
ema.update(net, decay=0.5)
out["after_lookahead"] = {name_of(k): ours(v) for k, v in net.state_dict().items() if v.dtype == torch.float32}

os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(out, f)
print(f"wrote {args.out}: loss {out['loss']:.6f}, {sum(len(v) for v in out['params'].values())} parameter values")
