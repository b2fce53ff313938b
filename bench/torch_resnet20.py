#!/usr/bin/env python3
"""PyTorch's time for the step zsq's bench_cuda times as BM_CudaTrainStep / BM_CudaInference: the
CIFAR ResNet-20 of models/resnet.cpp (1x32x32 input, 3x3 stem, three stages of three basic blocks with
1x1 conv + BN shortcuts where the shape changes, global average pool, linear), SGD with Nesterov
momentum and weight decay, cross-entropy, fp32. Run on the GPU machine next to bench_cuda (same session)
so the two figures are comparable. Prints img/s medians for each variant:
  fp32           TF32 off in cuDNN and cuBLAS (what zsq does: results match the CPU in fp32)
  fp32-cl        the same in channels_last (zsq's activation layout)
  default        PyTorch's defaults (cuDNN may use TF32 tensor cores for convolutions)
Timing: CUDA events around each step after warm-up, median of `--steps` steps.
"""
import argparse
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride, relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu(y) if self.relu else y


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = ConvBn(cin, cout, 3, stride, True)
        self.conv2 = ConvBn(cout, cout, 3, 1, False)
        self.shortcut = ConvBn(cin, cout, 1, stride, False) if stride != 1 or cin != cout else None

    def forward(self, x):
        r = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(self.conv2(self.conv1(x)) + r)


class ResNet20(nn.Module):
    def __init__(self, in_channels=1, width=16, classes=10):
        super().__init__()
        self.stem = ConvBn(in_channels, width, 3, 1, True)
        blocks, cin = [], width
        for s, cout in enumerate([width, 2 * width, 4 * width]):
            for b in range(3):
                blocks.append(Block(cin, cout, 2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def time_steps(step, steps, warmup=10):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def run(variant, batch, steps):
    tf32 = variant == "default"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if variant == "fp32-cl" else torch.contiguous_format
    torch.manual_seed(0)
    model = ResNet20().cuda().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = torch.randn(batch, 1, 32, 32, device="cuda").to(memory_format=fmt)
    y = (torch.arange(batch, device="cuda") % 10)

    def train_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t_train = time_steps(train_step, steps)
    model.eval()

    def infer():
        with torch.no_grad():
            model(x)

    t_infer = time_steps(infer, steps)
    return batch / t_train, batch / t_infer, t_train, t_infer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    for variant in ["fp32", "fp32-cl", "default"]:
        for batch in [128, 512]:
            tr, inf, t_tr, t_inf = run(variant, batch, args.steps)
            print(f"torch {variant:8s} batch {batch:4d}: train step {t_tr * 1e3:7.2f} ms = {tr:9.0f} img/s, "
                  f"inference {t_inf * 1e3:6.2f} ms = {inf:9.0f} img/s")


if __name__ == "__main__":
    main()
