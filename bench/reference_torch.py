#!/usr/bin/env python3
"""The PyTorch reference, re-timed on this machine: a faithful, minimal copy
of the DARTS reference's operations, evaluation network and search network
(``operations.py``, ``model.py``, ``model_search.py``, ``architect.py``), so
the benches can report tfnas/reference ratios measured in one session.

Not part of the package, and PyTorch is not a tfnas dependency: run it with
an interpreter that has torch (e.g. a venv with ``pip install torch numpy``).
``bench/train_step.py --torch-python PY`` and ``bench/search_step.py
--torch-python PY`` call it in a subprocess.

    PY bench/reference_torch.py train [--batch-size 32] [--steps 20]
    PY bench/reference_torch.py search --order 1|2 [--batch-size 16] [--steps 3]

Last line: one JSON object (ms_per_step or s_per_step, peak_rss_mb, loadavg).
"""

import argparse
import json
import os
import resource

import torch
import torch.nn as nn
import torch.nn.functional as F

from timing import median_seconds  # bench/timing.py (this script's folder)

# DARTS_V2 from the reference's genotypes.py
DARTS_V2_NORMAL = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                   ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]
DARTS_V2_REDUCE = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                   ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]
PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
}


def drop_path(x, drop_prob):
    if drop_prob > 0.:
        keep = 1. - drop_prob
        mask = torch.bernoulli(torch.full((x.size(0), 1, 1, 1), keep))
        x = x.div(keep) * mask
    return x


class Cell(nn.Module):
    def __init__(self, normal, reduce, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        edges = reduce if reduction else normal
        self.reduction = reduction
        self._ops = nn.ModuleList()
        self._indices = []
        for name, index in edges:
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))
            self._indices.append(index)
        self._concat = [2, 3, 4, 5]
        self.multiplier = len(self._concat)

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(4):
            hs = []
            for j in (2 * i, 2 * i + 1):
                h = self._ops[j](states[self._indices[j]])
                if self.training and drop_prob > 0 and not isinstance(self._ops[j], Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


def build_stem_cells_classifier(net, C, num_classes, layers, make_cell):
    """The reference networks' shared skeleton: a 3C stem, ``layers`` cells
    (reductions at 1/3 and 2/3; ``make_cell(C_pp, C_p, C, reduction,
    reduction_prev)`` returns ``(cell, out_channels)``), pooling, classifier."""
    C_curr = 3 * C
    net.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
    C_pp, C_p, C_curr = C_curr, C_curr, C
    net.cells = nn.ModuleList()
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        cell, out_channels = make_cell(C_pp, C_p, C_curr, reduction, reduction_prev)
        reduction_prev = reduction
        net.cells.append(cell)
        C_pp, C_p = C_p, out_channels
    net.global_pooling = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(C_p, num_classes)


class NetworkCIFAR(nn.Module):
    def __init__(self, C, num_classes, layers):
        super().__init__()

        def make_cell(C_pp, C_p, C_curr, reduction, reduction_prev):
            cell = Cell(DARTS_V2_NORMAL, DARTS_V2_REDUCE, C_pp, C_p, C_curr, reduction, reduction_prev)
            return cell, cell.multiplier * C_curr

        build_stem_cells_classifier(self, C, num_classes, layers, make_cell)
        self.drop_path_prob = 0.0

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        return self.classifier(self.global_pooling(s1).view(s1.size(0), -1))


class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for p in PRIMITIVES:
            op = OPS[p](C, stride, False)
            if "pool" in p:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class SearchCell(nn.Module):
    def __init__(self, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(4):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(4):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-4:], dim=1)


class SearchNetwork(nn.Module):
    def __init__(self, C, num_classes, layers):
        super().__init__()
        build_stem_cells_classifier(
            self, C, num_classes, layers,
            lambda C_pp, C_p, C_curr, red, red_prev: (SearchCell(C_pp, C_p, C_curr, red, red_prev),
                                                      4 * C_curr))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(14, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(14, len(PRIMITIVES)))

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def weights(self):
        ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pooling(s1).view(s1.size(0), -1))


def _batch(batch_size):
    return torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))


def time_train(args):
    model = NetworkCIFAR(args.init_channels, 10, args.layers)
    model.train()
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    x, y = _batch(args.batch_size)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    result = {}
    for drop, key in ((0.0, "ms_per_step"), (0.2, "ms_per_step_drop_path")):
        model.drop_path_prob = drop
        result[key] = round(1000 * median_seconds(step, args.warmup, args.steps), 1)
    return result


def time_search(args):
    model = SearchNetwork(args.init_channels, 10, args.layers)
    model.train()
    w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    eta, momentum, wd = 0.025, 0.9, 3e-4

    def alpha_step(xt, yt, xv, yv):
        a_opt.zero_grad()
        if args.order == 1:
            F.cross_entropy(model(xv), yv).backward()
        else:
            # architect._backward_step_unrolled: virtual step, then the fd Hessian-vector product
            weights = model.weights()
            loss = F.cross_entropy(model(xt), yt)
            grads = torch.autograd.grad(loss, weights)
            saved = [w.detach().clone() for w in weights]
            with torch.no_grad():
                for w, g in zip(weights, grads):
                    buf = w_opt.state.get(w, {}).get("momentum_buffer")
                    m = momentum * buf if buf is not None else torch.zeros_like(w)
                    w.sub_(eta * (m + g + wd * w))
            unrolled = F.cross_entropy(model(xv), yv)
            dalpha = torch.autograd.grad(unrolled, model.arch_parameters(), retain_graph=True)
            vector = torch.autograd.grad(unrolled, weights)
            with torch.no_grad():
                for w, s in zip(weights, saved):
                    w.copy_(s)
            R = 0.01 / torch.cat([v.view(-1) for v in vector]).norm()
            with torch.no_grad():
                for w, v in zip(weights, vector):
                    w.add_(R * v)
            gp = torch.autograd.grad(F.cross_entropy(model(xt), yt), model.arch_parameters())
            with torch.no_grad():
                for w, v in zip(weights, vector):
                    w.sub_(2 * R * v)
            gn = torch.autograd.grad(F.cross_entropy(model(xt), yt), model.arch_parameters())
            with torch.no_grad():
                for w, v in zip(weights, vector):
                    w.add_(R * v)
            for a, da, p, n in zip(model.arch_parameters(), dalpha, gp, gn):
                a.grad = da - eta * (p - n) / (2 * R)
        a_opt.step()

    def step():
        xt, yt = _batch(args.batch_size)
        xv, yv = _batch(args.batch_size)
        alpha_step(xt, yt, xv, yv)
        w_opt.zero_grad()
        F.cross_entropy(model(xt), yt).backward()
        nn.utils.clip_grad_norm_(model.weights(), 5.0)
        w_opt.step()

    return {"s_per_step": round(median_seconds(step, args.warmup, args.steps), 3), "order": args.order}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("train", "search"))
    p.add_argument("--order", type=int, default=1, choices=(1, 2))
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (train), 16 (search)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 train, 3 search)")
    p.add_argument("--warmup", type=int, default=None)
    args = p.parse_args()
    train = args.what == "train"
    args.batch_size = args.batch_size or (32 if train else 16)
    args.steps = args.steps or (20 if train else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if train else 1)
    torch.manual_seed(0)
    result = time_train(args) if train else time_search(args)
    result.update(torch=torch.__version__, threads=torch.get_num_threads(), batch_size=args.batch_size,
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  loadavg=os.getloadavg()[0])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
