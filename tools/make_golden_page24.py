#!/usr/bin/python3
"""make_golden_page24.py: writes tests/data/golden_page24.json, the reference that
tests/model/test_golden_page24.cpp checks the page24 preset against (the resnet9 network with a
3x3 prep conv, ReLU, pool after the ReLU, trainable BN scales; PyTorch's Nesterov SGD).

It runs David Page's own code, unchanged, from davidcpage/cifar10-fast at the commit page24 cites
(6987ab2; not in ../shared/peers: `fetch` it, or clone it): core.py and torch_backend.py are
imported as dawn.py imports them, and dawn.py's own text (its network definition, its `losses`)
is executed with its last line, the call of main(), left out. core.py imports pandas for its log
tables only; where pandas is missing an empty stand-in module is used.

The network is dawn.py's net() at small widths (prep, layer1 + residual, layer2, layer3 + residual,
max pool 4, linear without bias, x 0.125) in fp32 on the CPU, on a fixed batch of 8 images. BN
scales start at 1 (batch_norm's bn_weight_init) and are perturbed, BN biases drawn from
0.1 N(0, 1), so that neither is trivial. Recorded: the parameters, the logits and the summed loss
(dawn.py's CrossEntropyLoss(reduction='none'), summed by core.py's train loop) in training mode,
every gradient, the BN running statistics, every tensor after each of two steps of dawn.py's
optimizer (torch_backend's SGD: torch.optim.SGD with nesterov=True, momentum 0.9, weight decay
5e-4 x 512, lr = PiecewiseLinear([0, 5, 24], [0, 0.4, 0])(step / 97) / 512 where TorchOptimiser
advances step before each update, so update k uses step k + 1), and the logits in eval mode
after them. lr and weight decay are dawn.py's for its batch of 512 (the preset's constants),
not rescaled to the batch of 8. dawn.py's main() is not run (it downloads and trains): its
optimizer settings (epochs, schedule, batch, momentum, weight decay, nesterov) are copied from it
below, so the test's lr and epoch checks compare with these copies; reread main() when the
commit changes.

Usage: tools/make_golden_page24.py --repo DIR [--out tests/data/golden_page24.json]
  DIR holds core.py, torch_backend.py and dawn.py of cifar10-fast at 6987ab2, for example
  `for f in core.py torch_backend.py dawn.py; do git -C REPO show 6987ab2:$f > DIR/$f; done`.
Needs python3 with torch, torchvision (torch_backend.py imports it) and numpy (Debian:
python3-torch python3-torchvision).
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
ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden_page24.json"))
ap.add_argument("--widths", default="8,12,16,16")
args = ap.parse_args()
widths = [int(w) for w in args.widths.split(",")]
repo = os.path.abspath(args.repo)
sys.path.insert(0, repo)
try:
    import pandas  # noqa: F401
except ImportError:
    sys.modules["pandas"] = types.ModuleType("pandas")
with open(os.path.join(repo, "dawn.py")) as f:
    dawn = f.read().rstrip().split("\n")
assert dawn[-1].strip() == "main()", "dawn.py: its last line is not the call of main()"
ns = {"__name__": "dawn"}
exec("\n".join(dawn[:-1]), ns)  # its imports (core, torch_backend), net(), losses

BATCH, EPOCHS = 512, 24
SPE = 50000 // BATCH  # len(train_batches): drop_last=True
torch.manual_seed(11)
channels = dict(zip(("prep", "layer1", "layer2", "layer3"), widths))
model = ns["Network"](ns["union"](ns["net"](channels=channels), ns["losses"])).float()
with torch.no_grad():  # non-trivial BN scales and biases make the check sharper
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.add_(0.2 * torch.randn(m.weight.shape))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape))

NAMES = [("prep_conv.", "prep.conv."), ("prep_bn.", "prep.norm."),
         ("layer1_conv.", "layer1.conv."), ("layer1_bn.", "layer1.norm."),
         ("layer1_residual_res1_conv.", "layer1.res1.conv."),
         ("layer1_residual_res1_bn.", "layer1.res1.norm."),
         ("layer1_residual_res2_conv.", "layer1.res2.conv."),
         ("layer1_residual_res2_bn.", "layer1.res2.norm."),
         ("layer2_conv.", "layer2.conv."), ("layer2_bn.", "layer2.norm."),
         ("layer3_conv.", "layer3.conv."), ("layer3_bn.", "layer3.norm."),
         ("layer3_residual_res1_conv.", "layer3.res1.conv."),
         ("layer3_residual_res1_bn.", "layer3.res1.norm."),
         ("layer3_residual_res2_conv.", "layer3.res2.conv."),
         ("layer3_residual_res2_bn.", "layer3.res2.norm."),
         ("linear.", "head.")]


def name_of(k):
    for a, b in NAMES:
        if k.startswith(a):
            return b + k[len(a):]
    raise KeyError(k)


def ours(t):
    t = t.detach().float()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)  # OIHW -> OHWI
    return [float(v) for v in t.contiguous().view(-1)]


def floats(m):
    return {name_of(k): ours(v) for k, v in m.state_dict().items() if v.dtype == torch.float32}


N = 8
imgs = torch.rand(N, 3, 32, 32)  # dawn.py's normalise: (x / 255 - cifar10_mean) / cifar10_std
mean = torch.tensor(ns["cifar10_mean"]).view(1, 3, 1, 1)
std = torch.tensor(ns["cifar10_std"]).view(1, 3, 1, 1)
x = (imgs - mean) / std
labels = torch.tensor([3, 0, 9, 3, 1, 7, 5, 2])
out = {"made_by": "tools/make_golden_page24.py from davidcpage/cifar10-fast dawn.py, core.py, "
                  "torch_backend.py @ 6987ab2",
       "N": N, "widths": widths, "batches_per_epoch": SPE, "epochs": EPOCHS,
       "cifar10_mean": list(ns["cifar10_mean"]), "cifar10_std": list(ns["cifar10_std"]),
       "input_nhwc": [float(v) for v in x.permute(0, 2, 3, 1).contiguous().view(-1)],
       "labels": labels.tolist(), "params": floats(model)}

lr_schedule = ns["PiecewiseLinear"]([0, 5, EPOCHS], [0, 0.4, 0])
opt = ns["SGD"](ns["trainable_params"](model), lr=lambda step: lr_schedule(step / SPE) / BATCH,
                momentum=0.9, weight_decay=5e-4 * BATCH, nesterov=True)
out["lr"] = []
for step in range(2):
    model.train(True)
    model.zero_grad()
    cache = model({"input": x, "target": labels})
    cache["loss"].sum().backward()  # core.py's train loop: output['loss'].sum().backward()
    if step == 0:
        out["logits"] = ours(cache["classifier"])
        out["loss"] = float(cache["loss"].sum())
        out["grads"] = {name_of(k): ours(p.grad) for k, p in model.named_parameters()}
        out["after_forward"] = {name_of(k): ours(v) for k, v in model.state_dict().items()
                                if "running" in k}
    opt.step()
    out["lr"].append(float(opt.param_values()["lr"]))
    out["after_step%d" % step] = floats(model)
model.train(False)
with torch.no_grad():
    out["eval_logits"] = ours(model({"input": x, "target": labels})["classifier"])
result = {"format": "speedrun-golden-page24", "version": 1, "torch": torch.__version__,
          "page24": out}
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(result, f)
print("wrote %s: loss %.6f, lr of the two steps %s" % (args.out, out["loss"], out["lr"]))
