#!/usr/bin/python3
"""make_golden_tricks.py: writes tests/data/golden_tricks.json, the reference that
tests/model/test_golden_tricks.cpp checks the tricks10 preset (the resnet9 network, ghost BN, CELU,
Nesterov with the lr inside the velocity, the EMA) against.

It imports the peer's own code, unchanged: shared/peers/cifar10-fast-simple/model.py (its
ResNetBagOfTricks, conv_bn_relu, conv_pool_norm_act, GhostBatchNorm, patch_whitening,
label_smoothing_loss) and train.py (its update_nesterov, update_ema and lr schedule). The network is
the peer's class with every conv block replaced by the peer's own block functions at small widths
(the peer's forward is unchanged); ghost BN keeps 2 splits so a batch of 8 has 4 images per slice.
In fp32 on the CPU. Recorded on a fixed batch: the parameters (whitening from the peer's
patch_whitening of the batch), logits and summed loss in training mode, every gradient, the BN
running statistics, every tensor after each of two steps (lr from the peer's schedule at batch
counts 1 and 2), the EMA model after the first step (the peer updates it at batch 0 of an epoch),
and logits of the EMA model in eval mode.

The peer's ghost slice j holds images j, j + S, ... of the batch; ours holds a block of consecutive
images. The file stores the input in our order (the peer's images 0, 2, 4, 6, 1, 3, 5, 7) and every
per-image result in that order. Eval mode is entered by setting `training = False` on each module:
the peer's train(False) would first average the slices' running statistics (once, at its first
evaluation); ours, like the peer's evaluation model after that, reads the first slice's.

Needs python3 with torch and torchvision (Debian: python3-torch python3-torchvision).
Usage: tools/make_golden_tricks.py [--peers ../shared/peers] [--out tests/data/golden_tricks.json]
"""
import argparse
import copy
import importlib.util
import json
import os
import sys

import torch
from torch import nn

ap = argparse.ArgumentParser()
here = os.path.dirname(os.path.abspath(__file__))
ap.add_argument("--peers", default=os.path.join(here, "..", "..", "shared", "peers"))
ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden_tricks.json"))
ap.add_argument("--widths", default="8,12,16,16")
args = ap.parse_args()
widths = [int(w) for w in args.widths.split(",")]
peer_dir = os.path.join(args.peers, "cifar10-fast-simple")
sys.path.insert(0, peer_dir)


def load(name):
    path = os.path.join(peer_dir, name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    sys.modules[name] = m
    spec.loader.exec_module(m)  # definitions only; train.py's main is guarded
    return m, os.path.relpath(path, os.path.join(here, ".."))


model, model_src = load("model")
train, train_src = load("train")
SPLITS = 2


def ghost(m):  # the peer's blocks hard-code 16 splits; a batch of 8 needs fewer
    for mod in m.modules():
        if isinstance(mod, model.GhostBatchNorm):
            c = mod.num_features
            mod.num_splits = SPLITS
            mod.running_mean = torch.zeros(c * SPLITS)
            mod.running_var = torch.ones(c * SPLITS)
    return m


def small_net(whitening):
    net = model.ResNetBagOfTricks(whitening, c_in=3, c_out=10, scale_out=0.125)
    c = whitening.size(0)
    w = widths
    net.conv2 = model.conv_bn_relu(c, w[0], kernel_size=(1, 1), padding=0)
    net.conv3 = model.conv_pool_norm_act(w[0], w[1])
    net.conv4 = model.conv_bn_relu(w[1], w[1])
    net.conv5 = model.conv_bn_relu(w[1], w[1])
    net.conv6 = model.conv_pool_norm_act(w[1], w[2])
    net.conv7 = model.conv_pool_norm_act(w[2], w[3])
    net.conv8 = model.conv_bn_relu(w[3], w[3])
    net.conv9 = model.conv_bn_relu(w[3], w[3])
    net.linear11 = nn.Linear(w[3], 10, bias=False)
    return ghost(net).float()


NAMES = {"conv1.": "whiten.", "conv2.0.": "prep.conv.", "conv2.1.": "prep.norm.",
         "conv3.0.": "layer1.conv.", "conv3.2.": "layer1.norm.",
         "conv4.0.": "layer1.res1.conv.", "conv4.1.": "layer1.res1.norm.",
         "conv5.0.": "layer1.res2.conv.", "conv5.1.": "layer1.res2.norm.",
         "conv6.0.": "layer2.conv.", "conv6.2.": "layer2.norm.",
         "conv7.0.": "layer3.conv.", "conv7.2.": "layer3.norm.",
         "conv8.0.": "layer3.res1.conv.", "conv8.1.": "layer3.res1.norm.",
         "conv9.0.": "layer3.res2.conv.", "conv9.1.": "layer3.res2.norm.",
         "linear11.": "head."}


def name_of(k):
    for a, b in NAMES.items():
        if k.startswith(a):
            return b + k[len(a):]
    raise KeyError(k)


def ours(t):
    t = t.detach().float()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)  # OIHW -> OHWI
    return [float(v) for v in t.contiguous().view(-1)]


def floats(net):
    return {name_of(k): ours(v) for k, v in net.state_dict().items() if v.dtype == torch.float32}


torch.manual_seed(3)
N = 8
order = [0, 2, 4, 6, 1, 3, 5, 7]  # ours[k] = peer[order[k]]: the peer's slice j = our block j
imgs = torch.rand(N, 3, 32, 32) * 255
mean = torch.tensor([125.31, 122.95, 113.87]).view(1, 3, 1, 1)
std = torch.tensor([62.99, 62.09, 66.70]).view(1, 3, 1, 1)
x = (imgs - mean) / std
labels = torch.tensor([3, 0, 9, 3, 1, 7, 5, 2])
whitening = model.patch_whitening(x)
net = small_net(whitening)
with torch.no_grad():  # non-zero BN biases make the check sharper
    for m in net.modules():
        if isinstance(m, model.GhostBatchNorm):
            m.bias.copy_(0.1 * torch.randn(m.bias.shape))
valid = copy.deepcopy(net)
out = {"made_by": "tools/make_golden_tricks.py from " + model_src + " and " + train_src,
       "N": N, "widths": widths, "ghost_splits": SPLITS,
       "input_nhwc": [float(v) for v in x[order].permute(0, 2, 3, 1).contiguous().view(-1)],
       "labels": labels[order].tolist(), "params": floats(net)}

weights = [(w, torch.zeros_like(w)) for w in net.parameters() if w.requires_grad and len(w.shape) > 1]
biases = [(w, torch.zeros_like(w)) for w in net.parameters() if w.requires_grad and len(w.shape) <= 1]
lr_schedule = torch.cat([torch.linspace(0e+0, 2e-3, 194), torch.linspace(2e-3, 2e-4, 582)])
ema_rho = 0.99 ** 5
batch_count = 0
for step in range(2):
    batch_count += 1
    net.zero_grad()
    net.train(True)
    logits = net(x)
    loss = model.label_smoothing_loss(logits, labels, alpha=0.2)
    loss.sum().backward()
    if step == 0:
        out["logits"] = ours(logits[order])
        out["loss"] = float(loss.sum())
        out["grads"] = {name_of(k): ours(p.grad) for k, p in net.named_parameters() if p.requires_grad}
        out["after_forward"] = {name_of(k): ours(v) for k, v in net.state_dict().items() if "running" in k}
    lr_index = min(batch_count, len(lr_schedule) - 1)
    # the peer's lr is a float32 tensor element; so is ours once it reaches the kernel
    lr, lr_bias = lr_schedule[lr_index], 64.0 * lr_schedule[lr_index]
    train.update_nesterov(weights, lr, 0.256, 0.9)
    train.update_nesterov(biases, lr_bias, 0.004, 0.9)
    if step == 0:  # batch 0 of the epoch: 0 % ema_update_freq == 0
        train.update_ema(net, valid, ema_rho)
        out["ema_after_step0"] = floats(valid)
    out[f"after_step{step}"] = floats(net)

for m in valid.modules():
    m.training = False
with torch.no_grad():
    out["ema_eval_logits"] = ours(valid(x)[order])
result = {"format": "speedrun-golden-tricks", "version": 1, "torch": torch.__version__, "tricks10": out}
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(result, f)
print(f"wrote {args.out}: loss {out['loss']:.6f}")
