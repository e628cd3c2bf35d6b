"""PyTorch reference models for the importer tests, with RepDistiller / torchvision names.

Re-typed from RepDistiller's `models/resnet.py`, `wrn.py`, `vgg.py`, `resnetv2.py` and
torchvision's `models/resnet.py` (torchvision is not a dependency), keeping module names,
layer order and forward passes; the feature-returning branches (`is_feat`, `preact`) are
dropped since only logits are compared. Only imported by tests that have torch.
"""

import torch
from torch import nn
from torch.nn import functional as F

# --- RepDistiller models/resnet.py (CIFAR) ------------------------------------------------


def conv3x3(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  """Shared by RepDistiller's CIFAR ResNet and torchvision (same names and forward)."""
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    residual = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      residual = self.downsample(x)
    return F.relu(out + residual)


class CifarResNet(nn.Module):

  def __init__(self, depth, num_filters, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.inplanes = num_filters[0]
    self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(num_filters[0])
    self.relu = nn.ReLU(inplace=True)
    self.layer1 = self._make_layer(num_filters[1], n)
    self.layer2 = self._make_layer(num_filters[2], n, stride=2)
    self.layer3 = self._make_layer(num_filters[3], n, stride=2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(num_filters[3], num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
          nn.BatchNorm2d(planes))
    layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(self.avgpool(x).view(x.size(0), -1))


def cifar_resnet(name, num_classes):
  if name in ("resnet8x4", "resnet32x4"):
    return CifarResNet(int(name[6:-2]), [32, 64, 128, 256], num_classes)
  return CifarResNet(int(name[6:]), [16, 16, 32, 64], num_classes)


# --- RepDistiller models/wrn.py -------------------------------------------------------------


class WrnBlock(nn.Module):

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
    self.equalInOut = in_planes == out_planes
    self.convShortcut = None if self.equalInOut else nn.Conv2d(
        in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

  def forward(self, x):
    if not self.equalInOut:
      x = self.relu1(self.bn1(x))
    else:
      out = self.relu1(self.bn1(x))
    out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
    out = self.conv2(out)
    return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):

  def __init__(self, nb_layers, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        WrnBlock(i == 0 and in_planes or out_planes, out_planes, i == 0 and stride or 1)
        for i in range(nb_layers)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):

  def __init__(self, depth, num_classes, widen_factor=1):
    super().__init__()
    ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
    self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
    self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
    self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(ch[3], num_classes)

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
    return self.fc(out.view(out.size(0), -1))


def wrn(name, num_classes):
  _, depth, widen = name.split("_")
  return WideResNet(int(depth), num_classes, int(widen))


# --- RepDistiller models/vgg.py (batch_norm=True) -------------------------------------------

VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512],
              [512, 512, 512, 512]],
}


class VGG(nn.Module):

  def __init__(self, cfg, num_classes):
    super().__init__()
    self.block0 = self._make_layers(cfg[0], 3)
    self.block1 = self._make_layers(cfg[1], cfg[0][-1])
    self.block2 = self._make_layers(cfg[2], cfg[1][-1])
    self.block3 = self._make_layers(cfg[3], cfg[2][-1])
    self.block4 = self._make_layers(cfg[4], cfg[3][-1])
    self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
    self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
    self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
    self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
    self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
    self.classifier = nn.Linear(512, num_classes)

  def forward(self, x):
    h = x.shape[2]
    x = self.pool0(F.relu(self.block0(x)))
    x = self.pool1(F.relu(self.block1(x)))
    x = self.pool2(F.relu(self.block2(x)))
    x = F.relu(self.block3(x))
    if h == 64:
      x = self.pool3(x)
    x = self.pool4(F.relu(self.block4(x)))
    return self.classifier(x.view(x.size(0), -1))

  @staticmethod
  def _make_layers(cfg, in_channels):
    layers = []
    for v in cfg:
      layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v),
                 nn.ReLU(inplace=True)]
      in_channels = v
    return nn.Sequential(*layers[:-1])


# --- torchvision models/resnet.py and RepDistiller models/resnetv2.py --------------------------


class Bottleneck(nn.Module):
  """torchvision's (downsample) or resnetv2's (shortcut) Bottleneck, stride on the 3x3."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, shortcut_name="downsample"):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.shortcut_name = shortcut_name
    proj = None
    if stride != 1 or inplanes != planes * 4:
      proj = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                           nn.BatchNorm2d(planes * 4))
    setattr(self, shortcut_name, proj)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    proj = getattr(self, self.shortcut_name)
    return F.relu(out + (x if proj is None else proj(x)))


class ResNet4(nn.Module):
  """torchvision ResNet (imagenet=True, final `fc`) or resnetv2 ResNet (final `linear`)."""

  def __init__(self, blocks, bottleneck, num_classes, imagenet=True):
    super().__init__()
    self.imagenet = imagenet
    self.inplanes = 64
    if imagenet:
      self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
      self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for s, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
      layers = []
      for i in range(count):
        stride = 2 if s > 0 and i == 0 else 1
        if bottleneck:
          layers.append(Bottleneck(self.inplanes, planes, stride,
                                   "downsample" if imagenet else "shortcut"))
          self.inplanes = planes * 4
        else:
          down = None
          if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes))
          layers.append(BasicBlock(self.inplanes, planes, stride, down))
          self.inplanes = planes
      setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    head = nn.Linear(self.inplanes, num_classes)
    setattr(self, "fc" if imagenet else "linear", head)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    if self.imagenet:
      x = self.maxpool(x)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = torch.flatten(self.avgpool(x), 1)
    return (self.fc if self.imagenet else self.linear)(x)


def build(name, num_classes):
  """The reference torch model registered in kd_jax under `name`."""
  if name.startswith("resnet"):
    return cifar_resnet(name, num_classes)
  if name.startswith("wrn"):
    return wrn(name, num_classes)
  if name.startswith("vgg"):
    return VGG(VGG_CFG[name], num_classes)
  four_stage = {"ResNet18": ((2, 2, 2, 2), False, True), "ResNet34": ((3, 4, 6, 3), False, True),
                "ResNet50": ((3, 4, 6, 3), True, True),
                "ResNet50_cifar": ((3, 4, 6, 3), True, False)}
  blocks, bottleneck, imagenet = four_stage[name]
  return ResNet4(blocks, bottleneck, num_classes, imagenet)


def randomize(model, seed=0):
  """Non-trivial weights and BN running statistics, so every tensor's import is tested."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      fan_in = p[0].numel() if p.ndim > 1 else 1
      scale = (1.0 / fan_in) ** 0.5 if p.ndim > 1 else 0.2
      offset = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0  # BN scale near 1
      p.copy_(offset + scale * torch.randn(p.shape, generator=gen))
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
        module.num_batches_tracked.fill_(7)
  return model.eval()
