"""OLTR (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019).

`resnet10` is the paper's ImageNet-LT backbone (BasicBlock, [1, 1, 1, 1], 512-d feature) for stage 1.
`oltr_<resnet>` is the stage-2 model: the same backbone (same state-dict keys, so stage-1 weights
load as they are), a modulated attention block after the last stage, fc(512, 512) + ReLU, learned
class centroids and the meta-embedding classifier with a cosine-norm head. In train mode it returns
(logits, direct feature) for the discriminative centroid loss; in eval mode logits only.

Written from the paper and the facts of the original code; its 224-px-only attention (a Linear
over a 7x7 map) is generalised by resampling the 7x7 spatial attention to any feature-map size,
which is the identity at 7x7.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..core.errors import ConfigError, ModelFileError
from .registry import ModelCfg, register_model

log = logging.getLogger("visionzoo")

ATT_SIZE = 7  # the original spatial attention is a Linear over a 7x7 map (224 px input)


class ModulatedAttention(nn.Module):
    """Non-local embedded-Gaussian block (reduction 2, zero-initialised output conv) times a learned
    spatial attention; output = spatial_att * non_local(x) + x, so it starts as the identity."""

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        inter = channels // reduction
        self.inter = inter
        self.g, self.theta, self.phi = (nn.Conv2d(channels, inter, 1) for _ in range(3))
        self.conv_mask = nn.Conv2d(inter, channels, 1, bias=False)
        self.fc_spatial = nn.Linear(ATT_SIZE * ATT_SIZE * channels, ATT_SIZE * ATT_SIZE)
        for conv in (self.g, self.theta, self.phi):
            nn.init.kaiming_normal_(conv.weight)  # the original's default (fan_in) init
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_mask.weight)

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the 7x7 positions, resampled to x's map.

        Resampling keeps the per-position scale (mean 1/49), so the attention branch has the same
        strength at any input size as at 224 px.
        """
        b, c, h, w = x.shape
        grid = x if (h, w) == (ATT_SIZE, ATT_SIZE) else F.adaptive_avg_pool2d(x, ATT_SIZE)
        att = self.fc_spatial(grid.flatten(1)).softmax(dim=1).view(b, 1, ATT_SIZE, ATT_SIZE)
        if (h, w) != (ATT_SIZE, ATT_SIZE):
            att = F.interpolate(att, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)  # b, hw, inter
        theta = self.theta(x).flatten(2).transpose(1, 2)
        phi = self.phi(x).flatten(2)  # b, inter, hw
        weights = torch.bmm(theta, phi).softmax(dim=-1)  # b, hw, hw
        y = torch.bmm(weights, g).transpose(1, 2).reshape(b, self.inter, h, w)
        return self.spatial_attention(x) * self.conv_mask(y) + x


class CosNormClassifier(nn.Module):
    """scale * squash(x) . w/|w|, squash(x) = |x| / (1 + |x|) * x / |x| (scale 16)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        bound = 1.0 / in_features**0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        squashed = norm / (1 + norm) * (x / norm)
        return self.scale * squashed @ F.normalize(self.weight, dim=1).t()


class MetaEmbeddingClassifier(nn.Module):
    """v = reachability * (x + tanh(selector(x)) * softmax(hallucinator(x)) @ centroids), then cos-norm.

    reachability = 10 / distance to the nearest centroid. Centroids come in detached: only the
    centroid loss moves them.
    """

    def __init__(self, feat_dim: int, num_classes: int):
        super().__init__()
        self.fc_hallucinator = nn.Linear(feat_dim, num_classes)
        self.fc_selector = nn.Linear(feat_dim, feat_dim)
        self.cosnorm = CosNormClassifier(feat_dim, num_classes)

    def forward(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        reachability = 10.0 / torch.cdist(x, centroids).min(dim=1, keepdim=True).values.clamp_min(1e-12)
        memory = self.fc_hallucinator(x).softmax(dim=1) @ centroids
        selector = torch.tanh(self.fc_selector(x))
        return self.cosnorm(reachability * (x + selector * memory))


class OLTRResNet(torchvision.models.ResNet):
    """Stage-2 OLTR on a torchvision ResNet; backbone keys are the stage-1 model's."""

    # its classifier is the meta-embedding one, which starts fresh anyway: no cRT re-initialisation
    resettable_classifier = False

    def __init__(self, block, layers: list[int], num_classes: int = 1000):
        super().__init__(block, layers, num_classes=num_classes)
        feat = 512 * block.expansion
        del self.fc  # the stage-1 classifier's weights seed the hallucinator instead (load_stage1)
        self.modulated_att = ModulatedAttention(feat)
        self.fc_add = nn.Linear(feat, 512)
        self.meta_classifier = MetaEmbeddingClassifier(512, num_classes)
        self.centroids = nn.Parameter(torch.zeros(num_classes, 512))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(self.modulated_att(x)).flatten(1)
        return F.relu(self.fc_add(x))

    def forward(self, x: torch.Tensor):
        feat = self.features(x)
        logits = self.meta_classifier(feat, self.centroids.detach())
        return (logits, feat) if self.training else logits

    def load_stage1(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Backbone from a stage-1 state dict; its fc seeds the hallucinator. Returns the fresh keys."""
        sd = dict(state_dict)
        fc_w, fc_b = sd.pop("fc.weight", None), sd.pop("fc.bias", None)
        if fc_w is not None and fc_b is not None and fc_w.shape == self.meta_classifier.fc_hallucinator.weight.shape:
            sd["meta_classifier.fc_hallucinator.weight"], sd["meta_classifier.fc_hallucinator.bias"] = fc_w, fc_b
        elif fc_w is not None:  # e.g. a ResNet-50 stage 1: its fc sees 2048 features, the hallucinator 512
            log.warning("stage-1 classifier %s does not fit the hallucinator %s: it starts fresh",
                        tuple(fc_w.shape), tuple(self.meta_classifier.fc_hallucinator.weight.shape))
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if unexpected:
            raise ModelFileError(f"stage-1 weights have keys the OLTR model lacks: {unexpected[:5]}")
        backbone_missing = [k for k in missing if not k.startswith(("modulated_att.", "fc_add.", "meta_classifier.",
                                                                    "centroids"))]
        if backbone_missing:
            raise ModelFileError(f"stage-1 weights miss backbone keys: {backbone_missing[:5]}")
        return missing

    def init_from_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """--weights / --init-from for this model: stage 1's weights (or a whole stage-2 model's)."""
        try:
            fresh = self.load_stage1(state_dict)
        except ModelFileError as e:
            raise ModelFileError(f"{source}: {e}") from None
        log.info("OLTR stage 2: backbone from %s; new: %s", source, sorted({k.split(".")[0] for k in fresh}))


class DiscCentroidsLoss(nn.Module):
    """Attract each feature to its class centroid, repel it from the others (margin 10).

    loss = sum |f - c_y|^2 / (2 B) + 0.01 * clamp(10 - mean squared distance to other centroids, 0).
    Like the original, centroid gradients of the attract term are averaged per class (divided by
    1 + the class's count in the batch), the center-loss update rule.
    """

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01):
        super().__init__()
        self.margin, self.repel_weight = margin, repel_weight

    def forward(self, feat: torch.Tensor, target: torch.Tensor, centroids: torch.Tensor,
                weight: float = 1.0) -> torch.Tensor:
        """weight: the loss's weight in the total (0.01); returned loss is already multiplied by it.

        As in the original, the centroids' attract gradient is not scaled by that weight (only the
        features' is), so the centroids follow their class features at the centroid lr.
        """
        attract = _Attract.apply(feat, target, centroids, weight)
        dist = torch.cdist(feat, centroids).pow(2)  # b, num_classes
        other = dist.masked_fill(F.one_hot(target, centroids.shape[0]).bool(), 0.0)
        repel = (self.margin - other.sum() / other.numel()).clamp(min=0.0)
        return weight * (attract + self.repel_weight * repel)


class _Attract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat, target, centroids, weight):
        diff = feat - centroids.index_select(0, target)
        ctx.save_for_backward(diff, target)
        ctx.num_classes, ctx.weight = centroids.shape[0], weight
        return diff.pow(2).sum() / 2.0 / feat.shape[0]

    @staticmethod
    def backward(ctx, grad):
        diff, target = ctx.saved_tensors
        b = diff.shape[0]
        counts = torch.ones(ctx.num_classes, device=diff.device, dtype=diff.dtype).index_add_(
            0, target, torch.ones(b, device=diff.device, dtype=diff.dtype))
        grad_c = torch.zeros(ctx.num_classes, diff.shape[1], device=diff.device, dtype=diff.dtype)
        grad_c.index_add_(0, target, -diff)
        # grad carries weight (and any GradScaler scale): the centroids drop the weight, keep the scale.
        # counts are this process's batch: under DDP the update is the mean of per-rank class averages
        return grad * diff / b, None, grad / ctx.weight * grad_c / counts[:, None] / b, None


@register_model(ModelCfg(classifier="fc", final_norm="layer4.0.bn2"))
def resnet10(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
    """The OLTR paper's ImageNet-LT backbone: ResNet with one BasicBlock per stage."""
    if pretrained:
        raise ConfigError("--pretrained: resnet10 has no published weights; OLTR trains it from scratch")
    return torchvision.models.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


_OLTR_ARCH = {"oltr_resnet10": (BasicBlock, [1, 1, 1, 1]), "oltr_resnet18": (BasicBlock, [2, 2, 2, 2]),
              "oltr_resnet50": (Bottleneck, [3, 4, 6, 3])}


def _oltr_builder(name: str):
    block, layers = _OLTR_ARCH[name]

    def build(num_classes: int = 1000, pretrained: bool = False) -> nn.Module:
        if pretrained:
            raise ConfigError(f"--pretrained: {name}'s stage 2 starts from your stage-1 checkpoint (--init-from), "
                              "not hub weights")
        return OLTRResNet(block, layers, num_classes)

    build.__name__ = build.__qualname__ = name
    return build


for _name in _OLTR_ARCH:
    # "classifier" is the hallucinator: heads resized for a new class count go through load_stage1
    register_model(ModelCfg(classifier="meta_classifier.fc_hallucinator"))(_oltr_builder(_name))
