#!/usr/bin/python3
"""make_golden_dawn.py: writes tests/data/golden_dawn.json, the reference that
tests/model/test_golden_dawn.cpp checks the dawn network and the myrtle presets' optimizer against.

It runs David Page's own code, unchanged, from a checkout of davidcpage/cifar10-fast (not in
../shared/peers; `fetch` it, or clone it): the DAWN_net and res_block definitions are executed from
the code cell of experiments.ipynb that holds them, with core.py and torch_backend.py imported
as the notebook does (`from core import *; from torch_backend import *`). core.py imports pandas
for its log tables only; where pandas is missing an empty stand-in module is used (nothing this
script calls touches it).

The network is DAWN_net at small widths (the same graph: prep conv, 4 layers of 2 pre-activation
blocks, 1x1 projections where a layer downsamples, max + mean pool concatenated, biased linear),
in fp32 on the CPU. BN scales are drawn from U(0, 1) (PyTorch < 1.2's default, which the notebook's
runs had) and BN biases from 0.1 N(0, 1), so neither is trivial. Recorded on a fixed batch: the
parameters, logits and summed loss in training mode, every gradient, the BN running statistics, every
tensor after each of two steps of the notebook's optimizer (torch_backend's SGD = nesterov_update,
lr = PiecewiseLinear(step / batches per epoch) / batch size, weight decay 5e-4 x batch size, as its
`train` sets them), and the logits in eval mode after them.

Usage: tools/make_golden_dawn.py --repo DIR [--out tests/data/golden_dawn.json]
  DIR holds core.py, torch_backend.py and experiments.ipynb of cifar10-fast.
"""
import argparse
import json
import os
import sys
import types

import torch

ap = argparse.ArgumentParser()
here = os.path.dirname(os.path.abspath(__file__))
ap.add_argument("--repo", required=True)
ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden_dawn.json"))
ap.add_argument("--widths", default="8,12,16,16")
args = ap.parse_args()
widths = [int(w) for w in args.widths.split(",")]
sys.path.insert(0, os.path.abspath(args.repo))
try:
    import pandas  # noqa: F401
except ImportError:
    sys.modules["pandas"] = types.ModuleType("pandas")
ns = {}
exec("from core import *\nfrom torch_backend import *", ns)
with open(os.path.join(args.repo, "experiments.ipynb")) as f:
    nb = json.load(f)
cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
cell = [c for c in cells if "def DAWN_net" in c and "def res_block" in c]
assert len(cell) == 1, "experiments.ipynb: no single code cell defines res_block and DAWN_net"
exec(cell[0], ns)

torch.manual_seed(5)
net = ns["Network"](ns["DAWN_net"](c=widths)).float()
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_()
            m.bias.copy_(0.1 * torch.randn(m.bias.shape))


def name_of(k):
    """The peer's state_dict key -> ours (network.h, dawn family)."""
    if k.startswith("prep_conv."):
        return "prep.conv." + k[len("prep_conv."):]
    if k.startswith("final_linear."):
        return "head." + k[len("final_linear."):]
    parts = k.split("_")  # layer1_block0_branch_conv1.weight
    layer, block = parts[0], parts[1]
    rest = "_".join(parts[2:]).replace("branch_", "")
    return f"{layer}.{block}.{rest}"


def ours(t):
    t = t.detach().float()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)  # OIHW -> OHWI
    return [float(v) for v in t.contiguous().view(-1)]


def floats(m):
    return {name_of(k): ours(v) for k, v in m.state_dict().items() if v.dtype == torch.float32}


N = 8
imgs = torch.rand(N, 3, 32, 32) * 255
mean = torch.tensor([125.31, 122.95, 113.87]).view(1, 3, 1, 1)
std = torch.tensor([62.99, 62.09, 66.70]).view(1, 3, 1, 1)
x = (imgs - mean) / std
labels = torch.tensor([3, 0, 9, 3, 1, 7, 5, 2])
out = {"made_by": "tools/make_golden_dawn.py from cifar10-fast experiments.ipynb (DAWN_net), core.py, "
                  "torch_backend.py",
       "N": N, "widths": widths,
       "input_nhwc": [float(v) for v in x.permute(0, 2, 3, 1).contiguous().view(-1)],
       "labels": labels.tolist(), "params": floats(net)}

# the notebook's train(): lr(step) = schedule(step / len(batches)) / batch_size, wd 5e-4 batch_size,
# momentum 0.9, torch_backend's SGD (nesterov_update); here the post 3 schedule with 4 batches an
# epoch and the batch size of a real run (the reference batch is only N images)
batch_size, batches = 768, 4
schedule = ns["PiecewiseLinear"]([0, 8, 30], [0, 0.6, 0])
opt = ns["SGD"](ns["trainable_params"](net).values(),
                {"lr": lambda step: schedule(step / batches) / batch_size,
                 "weight_decay": ns["Const"](5e-4 * batch_size), "momentum": ns["Const"](0.9)})
loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
for step in range(2):
    net.train(True)
    net.zero_grad()
    logits = net({"input": x})["logits"]
    loss = loss_fn(logits, labels)
    loss.sum().backward()
    if step == 0:
        out["logits"] = ours(logits)
        out["loss"] = float(loss.sum())
        out["grads"] = {name_of(k): ours(p.grad) for k, p in net.named_parameters() if p.requires_grad}
        out["after_forward"] = {name_of(k): ours(v) for k, v in net.state_dict().items() if "running" in k}
    opt = ns["opt_step"](**opt)
    out[f"after_step{step}"] = floats(net)
out["batch_size"], out["batches_per_epoch"] = batch_size, batches
net.train(False)
with torch.no_grad():
    out["eval_logits"] = ours(net({"input": x})["logits"])
result = {"format": "speedrun-golden-dawn", "version": 1, "torch": torch.__version__, "dawn": out}
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(result, f)
print(f"wrote {args.out}: loss {out['loss']:.6f}, {sum(len(v) for v in out['params'].values())} parameter values")
