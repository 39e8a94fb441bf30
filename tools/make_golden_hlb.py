#!/usr/bin/python3
"""make_golden_hlb.py: writes tests/data/golden_hlb.json, the reference that
tests/model/test_golden_hlb.cpp checks the hlb preset against.

It runs the peer's own code, unchanged: shared/peers/hlb-CIFAR10/main.py. That file loads the data
and prints at import, so this script executes only its definitions (imports, the hyp dict and
other constants, functions and classes, read from the file's syntax tree) and calls them:
- whitening: init_whitening_conv on a fixed batch of smooth random images with whiten_splits
  (torch.cov per split, eigh, eigenvalues and eigenvectors averaged, eps 1e-2, the filters and
  their negatives) -> the whitening weights;
- init: make_net's conv1 step (dirac_ added, then rescaled to the init's mean and std) on a fixed
  weight, and its conv2 step (dirac_);
- schedule: torch's OneCycleLR with main()'s arguments over hyp's 12.1 epochs of 48 steps, the lr
  of every step divided by max_lr;
- loss: loss_fn (CrossEntropyLoss(label_smoothing=0.2)) on cutmix's soft labels
  portion * onehot(partner) + (1 - portion) * onehot(label), portion = 3^2 / 32^2, with the
  gradient of the sum.
- net: the whole network from the peer's classes at small widths (whitened from its batch,
  make_net's init), main()'s loss (half the summed cross-entropy at batch 1024), its two SGD
  groups and OneCycleLRs advanced to the schedule's peak, two updates, NetworkEMA's snapshot and
  update (decay 0.5), and the flip-averaged logits of eval mode: logits, loss, gradients, BN
  statistics, every tensor after each update and after the EMA.
In fp32 on the CPU (the schedule in fp64); values stored as the shortest text of their fp32.

Needs python3 with torch (Debian: python3-torch).
Usage: tools/make_golden_hlb.py [--peers ../shared/peers] [--out tests/data/golden_hlb.json]
"""
import argparse
import ast
import json
import math
import os
import re

import torch

ap = argparse.ArgumentParser()
here = os.path.dirname(os.path.abspath(__file__))
ap.add_argument("--peers", default=os.path.join(here, "..", "..", "shared", "peers"))
ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden_hlb.json"))
args = ap.parse_args()
src_path = os.path.join(args.peers, "hlb-CIFAR10", "main.py")
source = open(src_path).read()

# the definitions only: no data loading (an `if` at the top level), no printing, no main()
tree = ast.parse(source)
keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign)
tree.body = [n for n in tree.body if isinstance(n, keep)]
peer = {"__name__": "hlb_main"}
exec(compile(tree, src_path, "exec"), peer)
hyp = peer["hyp"]

torch.manual_seed(0)
out = {"format": "speedrun-golden-hlb", "version": 1, "source": os.path.relpath(src_path, os.path.join(here, ".."))}

# ---- whitening ---------------------------------------------------------------------------------
N, SPLITS, SIDE, k = 40, 5, 8, hyp["net"]["whitening"]["kernel_size"]  # 8 x 8 images keep the file small
# Each split is the same 8 smooth, channel-mixed images plus a little noise, so the splits' eigen-
# vectors agree (checked below): the peer averages them without aligning their signs, which is only
# well defined when the eigen solver returns the same signs for every split. (On real CIFAR-10 it
# does not for the weakest components: see docs/results.md, hlb.)
mixc = torch.tensor([[1.0, 0.3, 0.1], [0.2, 1.0, 0.4], [0.0, 0.5, 1.0]], dtype=torch.float64)
for attempt in range(100):
    base = torch.randn(N // SPLITS, 3, SIDE, SIDE, dtype=torch.float64)
    for d in (2, 3):  # neighbouring pixels correlated
        base = base + 0.8 * torch.roll(base, 1, dims=d)
    base = torch.einsum("nchw,dc->ndhw", base, mixc) * torch.tensor([1.0, 0.7, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    x = base.repeat(SPLITS, 1, 1, 1) + 0.02 * torch.randn(N, 3, SIDE, SIDE, dtype=torch.float64)
    # a mean offset per split (centring is per split, so the splits' covariances agree and the
    # pooled one differs) and an overall one
    shift = torch.arange(SPLITS, dtype=torch.float64).repeat_interleave(N // SPLITS).view(N, 1, 1, 1)
    x = x + 0.4 * shift * torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64).view(1, 3, 1, 1)
    x = (x + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64).view(1, 3, 1, 1)).float()
    vecs = [peer["get_whitening_parameters"](peer["get_patches"](part, patch_shape=(k, k)))[1].reshape(3 * k * k, -1)
            for part in x.split(N // SPLITS)]
    if all(float((v * vecs[0]).sum(1).min()) > 0.9 for v in vecs):
        break
else:
    raise SystemExit("no batch with sign-consistent splits found")
layer = peer["Conv"](3, 3 * k * k, kernel_size=k, padding=0)
peer["init_whitening_conv"](layer, x, num_examples=N, pad_amount=0, whiten_splits=N // SPLITS)
out["whiten"] = {
    "N": N, "splits": SPLITS, "side": SIDE, "eps": 1e-2,
    "x_nhwc": x.permute(0, 2, 3, 1).reshape(-1).tolist(),
    "weight_ohwi": layer.weight.data.permute(0, 2, 3, 1).reshape(-1).tolist(),  # (24, k, k, 3)
}

# ---- init: make_net's identity-added conv1, identity conv2 ------------------------------------
conv1 = peer["Conv"](4, 6)
w0 = conv1.weight.data.clone()
with torch.no_grad():  # the lines of make_net, applied to this conv
    dirac_weights_in = torch.nn.init.dirac_(torch.empty_like(conv1.weight))
    std_pre, mean_pre = torch.std_mean(conv1.weight.data)
    conv1.weight.data = conv1.weight.data + dirac_weights_in
    std_post, mean_post = torch.std_mean(conv1.weight.data)
    conv1.weight.data.sub_(mean_post).div_(std_post).mul_(std_pre).add_(mean_pre)
out["init"] = {
    "shape_ohwi": [6, 3, 3, 4],
    "w0_ohwi": w0.permute(0, 2, 3, 1).reshape(-1).tolist(),
    "conv1_ohwi": conv1.weight.data.permute(0, 2, 3, 1).reshape(-1).tolist(),
}

# ---- schedule: main()'s OneCycleLR ---------------------------------------------------------------
steps_per_epoch = 50000 // peer["batchsize"]
total = math.ceil(steps_per_epoch * hyp["misc"]["train_epochs"])
p = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([p], lr=hyp["opt"]["non_bias_lr"], momentum=0.85, nesterov=True)
initial_div_factor, final_lr_ratio = 1e16, 0.07
sched = torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=hyp["opt"]["non_bias_lr"], pct_start=hyp["opt"]["percent_start"],
    div_factor=initial_div_factor, final_div_factor=1.0 / (initial_div_factor * final_lr_ratio),
    total_steps=total, anneal_strategy="linear", cycle_momentum=False)
mult = []
for step in range(total):
    mult.append(opt.param_groups[0]["lr"] / hyp["opt"]["non_bias_lr"])
    opt.step()
    sched.step()
out["schedule"] = {"steps_per_epoch": steps_per_epoch, "total": total, "multiplier": mult}

# ---- loss on cutmix's soft labels ---------------------------------------------------------------
B, O = 8, 10
logits = (3 * torch.randn(B, O, dtype=torch.float64)).float().requires_grad_(True)
labels = torch.randint(0, O, (B,))
partner = torch.randperm(B)
targets = torch.nn.functional.one_hot(labels, O).float()
portion = float(hyp["net"]["cutmix_size"] ** 2) / (32 * 32)
soft = portion * targets[partner] + (1.0 - portion) * targets
loss = peer["loss_fn"](logits, soft).sum()
loss.backward()
out["loss"] = {
    "logits": logits.detach().reshape(-1).tolist(), "labels": labels.tolist(),
    "labels2": labels[partner].tolist(), "mix": portion, "smoothing": 0.2,
    "loss_sum": loss.item(), "dlogits": logits.grad.reshape(-1).tolist(),
}

# ---- the whole network, its loss, two optimizer steps, the EMA, the TTA evaluation ---------------
# The peer's own classes (SpeedyConvNet of ConvGroup, BatchNorm (eps 1e-12, momentum 0.4, weight
# frozen at 1), Conv without bias, Linear with temperature, FastGlobalMaxPooling) at small widths,
# in fp32 on the CPU; whitened from the batch itself; make_net's identity-added conv1 and dirac
# conv2. The loss is main()'s: loss_fn(...) x loss_scale_scaler x 512/batchsize, summed, divided by
# loss_scale_scaler (half the summed cross-entropy at batch 1024). The optimizer is main()'s: two
# SGD (Nesterov, momentum 0.85, coupled weight decay) groups split by 'bias' in the name, each with
# its OneCycleLR over the run's 581 steps, advanced to FIRST before the two updates (the peak of
# the schedule, where a wrong lr or decay shows most). After update 0 NetworkEMA snapshots the
# network, after update 1 it updates with decay 0.5 and copies itself back (as main() does from
# epoch 2 on). Then eval mode: the net's forward averages each image's logits with its mirror's.
import warnings
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
torch.manual_seed(1)
NW, WIDTHS, FIRST = 6, [8, 16, 16], 132
wd_depth = 3 * k * k
x = torch.randn(NW, 3, 32, 32)
for d in (2, 3):  # smooth images, as photos are: the whitening has structure to find
    x = 0.6 * x + 0.4 * torch.roll(x, 1, dims=d)
x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
labels = torch.tensor([3, 0, 9, 3, 5, 1])
nn = torch.nn
net = peer["SpeedyConvNet"](nn.ModuleDict({
    "initial_block": nn.ModuleDict({
        "whiten": peer["Conv"](3, wd_depth, kernel_size=k, padding=0),
        "activation": nn.GELU(),
    }),
    "conv_group_1": peer["ConvGroup"](2 * wd_depth, WIDTHS[0]),
    "conv_group_2": peer["ConvGroup"](WIDTHS[0], WIDTHS[1]),
    "conv_group_3": peer["ConvGroup"](WIDTHS[1], WIDTHS[2]),
    "pooling": peer["FastGlobalMaxPooling"](),
    "linear": peer["Linear"](WIDTHS[2], 10, bias=False, temperature=hyp["opt"]["scaling_factor"]),
})).float()
net.train()
with torch.no_grad():  # make_net's initialisation, at these widths
    peer["init_whitening_conv"](net.net_dict["initial_block"]["whiten"], x, num_examples=NW, pad_amount=0)
    for name in net.net_dict.keys():
        if "conv_group" in name:
            g = net.net_dict[name]
            dirac_weights_in = torch.nn.init.dirac_(torch.empty_like(g.conv1.weight))
            std_pre, mean_pre = torch.std_mean(g.conv1.weight.data)
            g.conv1.weight.data = g.conv1.weight.data + dirac_weights_in
            std_post, mean_post = torch.std_mean(g.conv1.weight.data)
            g.conv1.weight.data.sub_(mean_post).div_(std_post).mul_(std_pre).add_(mean_pre)
            torch.nn.init.dirac_(g.conv2.weight)
            for bn in (g.norm1, g.norm2):  # non-zero BN biases make the check sharper
                bn.bias.copy_(0.1 * torch.randn(bn.bias.shape))


def name_of(key):  # the peer's state_dict key -> our tensor name
    key = key.removeprefix("net_dict.").replace("initial_block.whiten", "whiten").replace("linear", "head")
    return re.sub(r"^conv_group_(\d)", r"block\1", key)


def ours(t):
    t = t.detach().float()
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t).reshape(-1).tolist()  # OIHW -> OHWI


def floats(module):
    return {name_of(key): ours(v) for key, v in module.state_dict().items() if v.dtype == torch.float32}


bs = peer["batchsize"]
spe = 50000 // bs
total = math.ceil(spe * hyp["misc"]["train_epochs"])
non_bias, bias = peer["init_split_parameter_dictionaries"](net)
opt, opt_bias = torch.optim.SGD(**non_bias), torch.optim.SGD(**bias)
one_cycle = lambda o, max_lr: torch.optim.lr_scheduler.OneCycleLR(
    o, max_lr=max_lr, pct_start=hyp["opt"]["percent_start"], div_factor=1e16,
    final_div_factor=1.0 / (1e16 * 0.07), total_steps=total, anneal_strategy="linear", cycle_momentum=False)
sched, sched_bias = one_cycle(opt, non_bias["lr"]), one_cycle(opt_bias, bias["lr"])
for _ in range(FIRST):
    sched.step()
    sched_bias.step()
loss_factor = hyp["opt"]["loss_scale_scaler"] * (512 / bs) / hyp["opt"]["loss_scale_scaler"]
targets = torch.nn.functional.one_hot(labels, 10).float()
net_out = {"widths": WIDTHS, "N": NW, "first_step": FIRST, "steps_per_epoch": spe, "total": total,
           "loss_factor": loss_factor,
           "input_nhwc": x.permute(0, 2, 3, 1).reshape(-1).tolist(), "labels": labels.tolist(),
           "params": floats(net), "lr_multiplier": []}
ema = None
for step in range(2):
    net_out["lr_multiplier"].append(opt.param_groups[0]["lr"] / non_bias["lr"])
    outputs = net(x)
    loss = peer["loss_fn"](outputs, targets).mul(hyp["opt"]["loss_scale_scaler"] * (512 / bs)).sum().div(hyp["opt"]["loss_scale_scaler"])
    loss.backward()
    if step == 0:
        net_out["logits"], net_out["loss"] = ours(outputs), loss.item()
        net_out["grads"] = {name_of(key): ours(p.grad) for key, p in net.named_parameters() if p.requires_grad}
        net_out["after_forward"] = {key: v for key, v in floats(net).items() if "running" in key}
    opt.step()
    opt_bias.step()
    sched.step()
    sched_bias.step()
    opt.zero_grad(set_to_none=True)
    opt_bias.zero_grad(set_to_none=True)
    net_out[f"after_step{step}"] = floats(net)
    if step == 0:
        ema = peer["NetworkEMA"](net)
    else:
        ema.update(net, decay=0.5)
net_out["after_lookahead"] = floats(net)
net.eval()
with torch.no_grad():
    net_out["eval_logits"] = ours(net(x))
assert net_out["lr_multiplier"][0] > 0.99, net_out["lr_multiplier"]
out["net"] = net_out


def f32(v):  # the shortest text that reads back as the same fp32 value
    if isinstance(v, float):
        for digits in range(6, 18):
            t = float(f"{v:.{digits}g}")
            if torch.tensor(t, dtype=torch.float32).item() == torch.tensor(v, dtype=torch.float32).item():
                return t
    return v


def shorten(o):
    if isinstance(o, dict):
        return {key: (val if key in ("multiplier", "mix", "loss_sum", "lr_multiplier", "loss_factor") else shorten(val)) for key, val in o.items()}
    if isinstance(o, list):
        return [shorten(v) for v in o]
    return f32(o)


with open(args.out, "w") as f:
    json.dump(shorten(out), f)
print(f"wrote {args.out}: whitening {N} images / {SPLITS} splits, {total} schedule steps, "
      f"loss {out['loss']['loss_sum']:.6f}, the network's loss {out['net']['loss']:.6f}")
