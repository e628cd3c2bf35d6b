"""PyTorch reference modules for the tests of kd_jax's MobileNetV2, ShuffleV1/V2 and MobileNetV1.

Written for these tests, with exactly the module names (and so the state_dict keys) of
RepDistiller's `models/mobilenetv2.py` (`mobile_half`), `models/ShuffleNetv1.py`
(`ShuffleV1`), `models/ShuffleNetv2.py` (`ShuffleV2`) and mdistiller's
`models/imagenet/mobilenetv1.py` (`MobileNetV1`), and the same forward computation (NCHW).
Only the logits are returned; feature lists and `is_feat`/`preact` flags are left out.
Importing this file needs torch; the tests import it after `pytest.importorskip("torch")`.
"""

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- MobileNetV2

def _mbv2_conv_bn(inp, oup, kernel, stride):
  return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
                       nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = inp * expand_ratio
    self.use_res_connect = stride == 1 and inp == oup
    # Keys conv.{0,1,3,4,6,7}: pw conv, bn, relu, dw conv, bn, relu, pw-linear conv, bn.
    self.conv = nn.Sequential(
        nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
        nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  """RepDistiller's CIFAR MobileNetV2; `mobile_half` is expand_ratio=6, width_mult=0.5."""

  def __init__(self, num_classes, expand_ratio=6, width_mult=0.5, input_size=32):
    super().__init__()
    setting = [(1, 16, 1, 1), (expand_ratio, 24, 2, 1), (expand_ratio, 32, 3, 2),
               (expand_ratio, 64, 4, 2), (expand_ratio, 96, 3, 1),
               (expand_ratio, 160, 3, 2), (expand_ratio, 320, 1, 1)]
    channels = int(32 * width_mult)
    self.conv1 = _mbv2_conv_bn(3, channels, 3, 2)
    self.blocks = nn.ModuleList()
    for t, c, n, s in setting:
      layers = []
      for stride in [s] + [1] * (n - 1):
        layers.append(InvertedResidual(channels, int(c * width_mult), stride, t))
        channels = int(c * width_mult)
      self.blocks.append(nn.Sequential(*layers))
    last = int(1280 * width_mult) if width_mult > 1.0 else 1280
    self.conv2 = _mbv2_conv_bn(channels, last, 1, 1)
    self.classifier = nn.Sequential(nn.Linear(last, num_classes))
    self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

  def forward(self, x):
    out = self.conv1(x)
    for block in self.blocks:
      out = block(out)
    out = self.avgpool(self.conv2(out))
    return self.classifier(out.view(out.size(0), -1))


# ----------------------------------------------------------------------------- ShuffleNets

def channel_shuffle(x, groups):
  n, c, h, w = x.size()
  return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Bottleneck(nn.Module):
  """ShuffleNet v1 unit; stride 2 concatenates an avg-pooled shortcut."""

  def __init__(self, in_planes, out_planes, stride, groups):
    super().__init__()
    self.stride = stride
    mid = int(out_planes / 4)
    self.g = 1 if in_planes == 24 else groups
    self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = nn.Sequential()
    if stride == 2:
      self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

  def forward(self, x):
    out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = self.shortcut(x)
    return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleV1(nn.Module):

  def __init__(self, num_classes, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    in_planes = 24
    for i, (planes, blocks) in enumerate(zip(out_planes, num_blocks)):
      layers = []
      for j in range(blocks):
        cat_planes = in_planes if j == 0 else 0
        layers.append(Bottleneck(in_planes, planes - cat_planes, 2 if j == 0 else 1, groups))
        in_planes = planes
      setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
    self.linear = nn.Linear(out_planes[2], num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.avg_pool2d(out, 4)
    return self.linear(out.view(out.size(0), -1))


class BasicBlock(nn.Module):
  """ShuffleNet v2 unit: split channels in half, transform the second half, concat, shuffle."""

  def __init__(self, in_channels):
    super().__init__()
    c = in_channels // 2
    self.conv1 = nn.Conv2d(c, c, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = nn.Conv2d(c, c, 3, stride=1, padding=1, groups=c, bias=False)
    self.bn2 = nn.BatchNorm2d(c)
    self.conv3 = nn.Conv2d(c, c, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x):
    c = int(x.size(1) * 0.5)
    x1, x2 = x[:, :c], x[:, c:]
    out = F.relu(self.bn1(self.conv1(x2)))
    out = self.bn2(self.conv2(out))
    out = F.relu(self.bn3(self.conv3(out)))
    return channel_shuffle(torch.cat([x1, out], 1), 2)


class DownBlock(nn.Module):

  def __init__(self, in_channels, out_channels):
    super().__init__()
    mid = out_channels // 2
    self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x):
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
    right = F.relu(self.bn5(self.conv5(right)))
    return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2(nn.Module):
  """RepDistiller's ShuffleV2 is net_size=1: out_channels (116, 232, 464, 1024)."""

  def __init__(self, num_classes, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    in_channels = 24
    for i in range(3):
      layers = [DownBlock(in_channels, out_channels[i])]
      layers += [BasicBlock(out_channels[i]) for _ in range(num_blocks[i])]
      in_channels = out_channels[i]
      setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
    self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, 1, 0, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels[3])
    self.linear = nn.Linear(out_channels[3], num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = F.avg_pool2d(out, 4)
    return self.linear(out.view(out.size(0), -1))


# ----------------------------------------------------------------------------- MobileNetV1

class MobileNetV1(nn.Module):
  """mdistiller's ImageNet MobileNetV1 (AvgPool2d(7): 224x224 input)."""

  def __init__(self, num_classes=1000):
    super().__init__()

    def conv_bn(inp, oup, stride):
      return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup),
                           nn.ReLU(inplace=True))

    def conv_dw(inp, oup, stride):
      return nn.Sequential(
          nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
          nn.ReLU(inplace=True),
          nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))

    widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
              (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    self.model = nn.Sequential(conv_bn(3, 32, 2), *[conv_dw(*w) for w in widths],
                               nn.AvgPool2d(7))
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x):
    return self.fc(self.model(x).reshape(-1, 1024))


def count_params(module):
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def randomize_(module, generator):
  """Random weights and random BN running statistics (in place), so a round trip is a real test."""
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith("running_mean"):
        tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
      elif name.endswith("weight") and tensor.ndim == 1:  # BN scale
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      else:
        fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.0 / fan_in) ** 0.5)
  return module
