"""Knowledge distillation's building blocks (engine/distill.py): the losses against hand-computed values, every
mode of DistillCriterion, the frozen Teacher's renormalisation, and load_teacher's sources and one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visionzoo.core.errors import ConfigError, ModelFileError
from visionzoo.data.loader import DeviceNormalizer
from visionzoo.engine.distill import (
    DistillCriterion,
    FeatureTap,
    Teacher,
    feature_kd_loss,
    hard_kd_loss,
    load_teacher,
    logit_kd_loss,
    prepare_student,
    teacher_digest,
)
from visionzoo.engine.objective import Criterion
from visionzoo.models import Checkpoint, create_model

S = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]  # student logits
T = [[3.0, 2.0, 1.0], [0.0, 1.0, 0.0]]  # teacher logits: argmax (0, 1)
LABELS = [2, 0]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# written out (plain-Python sums over the 2x3 tensors above, see the helpers below)
KD_T1 = 0.6368526123553854  # KL(softmax(t) || softmax(s)), batch mean
KD_T4 = 0.7181364468453186  # KL(softmax(t/4) || softmax(s/4)) * 16
HARD = 1.7531091265562448  # CE(s, (0, 1))
TASK = 0.7531091265562451  # CE(s, (2, 0))


def _softmax(row: list[float], temp: float = 1.0) -> list[float]:
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def _kd(s: list[list[float]], t: list[list[float]], temp: float) -> float:
    """sum p_t * log(p_t / p_s) per row, mean over rows, times T^2: the definition, loop by loop."""
    kl = [sum(p * math.log(p / q) for p, q in zip(_softmax(tr, temp), _softmax(sr, temp))) for sr, tr in zip(s, t)]
    return sum(kl) / len(kl) * temp**2


def _ce(s: list[list[float]], soft: list[list[float]]) -> float:
    return sum(-sum(q * math.log(p) for p, q in zip(_softmax(r), qs)) for r, qs in zip(s, soft)) / len(s)


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_written_values_are_the_definitions():
    assert _kd(S, T, 1) == pytest.approx(KD_T1) and _kd(S, T, 4) == pytest.approx(KD_T4)
    assert _ce(S, [[1, 0, 0], [0, 1, 0]]) == pytest.approx(HARD)
    assert _ce(S, [[0, 0, 1], [1, 0, 0]]) == pytest.approx(TASK)


def test_logit_kd_loss_values_and_temperature_squared():
    assert logit_kd_loss(tensor(S), tensor(T), 1.0).item() == pytest.approx(KD_T1, rel=1e-5)
    assert logit_kd_loss(tensor(S), tensor(T), 4.0).item() == pytest.approx(KD_T4, rel=1e-5)
    # without the T^2 factor the T=4 value would be 16 times smaller
    assert KD_T4 / 16 == pytest.approx(0.04488352792783241)
    assert logit_kd_loss(tensor(T), tensor(T), 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_hard_and_feature_losses():
    assert hard_kd_loss(tensor(S), tensor(T)).item() == pytest.approx(HARD, rel=1e-5)
    # the argmax alone counts: a teacher ten times as sure gives the same loss
    assert hard_kd_loss(tensor(S), tensor(T) * 10).item() == pytest.approx(HARD, rel=1e-5)
    assert hard_kd_loss(tensor(S), tensor([[0, 0, 1], [1, 0, 0]])).item() == pytest.approx(TASK, rel=1e-5)
    b = tensor([[0.0, 2.0, 5.0], [1.0, 1.0, 1.0]])
    assert feature_kd_loss(tensor(S), b).item() == pytest.approx(4 / 3, rel=1e-5)  # (1+0+4+1+1+1)/6


def test_logit_mode_mixes_task_and_kd():
    crit = DistillCriterion(Criterion(), "logit", alpha=0.25, temperature=4.0)
    crit.set_teacher(tensor(T))
    loss, logits = crit(tensor(S), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(0.75 * TASK + 0.25 * KD_T4, rel=1e-5)
    assert torch.equal(logits, tensor(S))
    # the teacher output is used by one call only
    with pytest.raises(RuntimeError, match="no teacher output"):
        crit(tensor(S), torch.tensor(LABELS))


@pytest.mark.parametrize("target", [torch.tensor(LABELS), tensor([[0.3, 0.0, 0.7], [0.6, 0.4, 0.0]])])
def test_alpha_zero_is_the_task_loss_exactly(target):
    task = Criterion(label_smoothing=0.1)
    crit = DistillCriterion(task, "logit", alpha=0.0)
    loss, _ = crit(tensor(S), target, tensor(T))
    assert torch.equal(loss, task(tensor(S), target)[0])


def test_soft_targets_and_smoothing_reach_the_task_part():
    soft = [[0.3, 0.0, 0.7], [0.6, 0.4, 0.0]]
    smoothed = [[q * 0.9 + 0.1 / 3 for q in row] for row in soft]
    crit = DistillCriterion(Criterion(label_smoothing=0.1), "logit", alpha=0.5, temperature=1.0)
    loss, _ = crit(tensor(S), tensor(soft), tensor(T))
    assert loss.item() == pytest.approx(0.5 * _ce(S, smoothed) + 0.5 * KD_T1, rel=1e-5)
    hard = DistillCriterion(Criterion(), "hard")
    loss, _ = hard(tensor(S), tensor(soft), tensor(T))
    assert loss.item() == pytest.approx(0.5 * _ce(S, soft) + 0.5 * HARD, rel=1e-5)


def test_hard_mode_uses_the_teachers_argmax():
    crit = DistillCriterion(Criterion(), "hard", alpha=0.9)  # DeiT's 50/50, whatever alpha says
    loss, _ = crit(tensor(S), torch.tensor(LABELS), tensor(T))
    assert loss.item() == pytest.approx(0.5 * TASK + 0.5 * HARD, rel=1e-5)


def test_token_mode_splits_the_heads():
    zeros = torch.zeros(2, 3)
    soft = DistillCriterion(Criterion(), "token", temperature=4.0)
    loss, logits = soft((tensor(S), zeros), torch.tensor(LABELS), tensor(T))
    # the class head learns the labels (TASK), the dist head the teacher (uniform student: KL to uniform)
    assert loss.item() == pytest.approx(0.5 * TASK + 0.5 * _kd([[0, 0, 0]] * 2, T, 4.0), rel=1e-5)
    assert torch.allclose(logits, tensor(S) / 2)
    hard = DistillCriterion(Criterion(), "token", token_hard=True)
    loss, _ = hard((zeros, tensor(S)), torch.tensor(LABELS), tensor(T))
    assert loss.item() == pytest.approx(0.5 * math.log(3) + 0.5 * HARD, rel=1e-5)
    with pytest.raises(RuntimeError, match="cls_logits, dist_logits"):
        hard(tensor(S), torch.tensor(LABELS), tensor(T))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def test_feature_mode_projection_is_trained():
    student = create_model("test_efficientnet", num_classes=3)
    tap = FeatureTap(student)
    assert tap.dim == 256
    crit = DistillCriterion(Criterion(), "feature", alpha=0.5, student_tap=tap, teacher_dim=5)
    assert [p.shape for p in crit.extra_parameters()] == [torch.Size([5, 256]), torch.Size([5])]
    x, teacher_feat = torch.randn(2, 3, 32, 32), torch.randn(2, 5)
    out = student(x)
    feat = tap._features.detach().clone()
    loss, logits = crit(out, torch.tensor(LABELS), (tensor(T), teacher_feat))
    proj = feat @ crit.projection.weight.T + crit.projection.bias
    expected = Criterion()(out, torch.tensor(LABELS))[0] + 0.5 * ((proj - teacher_feat) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crit.extra_parameters())
    assert student.conv_stem.weight.grad is not None


def test_feature_tap_gives_the_pooled_features_of_a_torchvision_model():
    model = create_model("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feat = FeatureTap(model)(x)
    body = nn.Sequential(*list(model.children())[:-1])
    assert feat.shape == (2, 512) and torch.allclose(feat, body(x).flatten(1), atol=1e-5)
    assert torch.allclose(logits, model.fc(feat), atol=1e-5)


def test_teacher_renormalises_the_students_batch():
    torch.manual_seed(0)
    raw = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    student_norm = DeviceNormalizer(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))
    teacher_norm = DeviceNormalizer((0.5,) * 3, (0.5,) * 3, torch.device("cpu"))
    teacher = Teacher(tiny_cnn(), IMAGENET_MEAN, IMAGENET_STD, mean=(0.5,) * 3, std=(0.5,) * 3)
    xs, xt = student_norm(raw), teacher_norm(raw)
    assert torch.allclose(teacher.teacher_input(xs), xt, atol=1e-5)
    # mixing is linear: the mixed student batch becomes the mixed teacher batch
    mixed = 0.3 * xs + 0.7 * xs.flip(0)
    assert torch.allclose(teacher.teacher_input(mixed), 0.3 * xt + 0.7 * xt.flip(0), atol=1e-5)
    # another input size: resized on the device, as resizing the teacher-normalised images
    big = Teacher(tiny_cnn(), IMAGENET_MEAN, IMAGENET_STD, mean=(0.5,) * 3, std=(0.5,) * 3, img_size=12)
    want = nn.functional.interpolate(xt, size=(12, 12), mode="bilinear", antialias=True)
    assert torch.allclose(big.teacher_input(xs), want, atol=1e-5)
    assert big(xs).shape == (4, 3)
    # the same normalisation: the batch passes through untouched
    same = Teacher(tiny_cnn(), IMAGENET_MEAN, IMAGENET_STD, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.equal(same.teacher_input(xs), xs)


def test_teacher_is_frozen_even_in_a_training_parent():
    teacher = Teacher(tiny_cnn(), IMAGENET_MEAN, IMAGENET_STD, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      channels_last=True)
    parent = nn.ModuleDict({"student": tiny_cnn(), "teacher": teacher})
    parent.train()
    assert parent["student"].training and not teacher.model.training
    assert not any(m.training for m in teacher.model.modules())
    bn = teacher.model[1]
    before = bn.running_mean.clone()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out, again = teacher(x), teacher(x)
    assert torch.equal(out, again)  # dropout off
    assert not out.requires_grad and torch.equal(bn.running_mean, before)
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.fixture(scope="module")
def tiny_teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("test_efficientnet", num_classes=3).eval()
    run = tmp_path_factory.mktemp("teacher-run")
    Checkpoint(model=model.state_dict(), model_name="test_efficientnet", num_classes=3, classes=["a", "b", "c"],
               img_size=32).save(run / "best.pth")
    return model, run


def test_load_teacher_from_a_checkpoint_and_a_run_folder(tiny_teacher_file):
    model, run = tiny_teacher_file
    x = torch.randn(2, 3, 32, 32)
    for source in (run / "best.pth", run):
        teacher = load_teacher(str(source), None, False, ["a", "b", "c"], torch.device("cpu"), IMAGENET_MEAN,
                               IMAGENET_STD)
        assert torch.allclose(teacher(x), model(x), atol=1e-5)
    features = load_teacher(str(run), None, False, ["a", "b", "c"], torch.device("cpu"), IMAGENET_MEAN,
                            IMAGENET_STD, features=True)
    logits, feat = features(x)
    assert logits.shape == (2, 3) and feat.shape == (2, 256)


def test_load_teacher_from_bare_weights(tiny_teacher_file, tmp_path):
    from safetensors.torch import save_file

    model, _ = tiny_teacher_file
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    save_file(model.state_dict(), str(tmp_path / "sd.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    for name in ("sd.pth", "sd.safetensors"):
        teacher = load_teacher(str(tmp_path / name), "test_efficientnet", False, ["x", "y", "z"],
                               torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD)
        assert torch.allclose(teacher(x), model(x), atol=1e-5)
    with pytest.raises(ConfigError, match="bare state dict"):
        load_teacher(str(tmp_path / "sd.pth"), None, False, ["x", "y", "z"], torch.device("cpu"), IMAGENET_MEAN,
                     IMAGENET_STD)
    with pytest.raises(ConfigError, match="has 3 classes, the data has 4"):
        load_teacher(str(tmp_path / "sd.pth"), "test_efficientnet", False, list("wxyz"), torch.device("cpu"),
                     IMAGENET_MEAN, IMAGENET_STD)


def test_load_teacher_from_a_hub_folder(tiny_teacher_file, tmp_path):
    from visionzoo.inference.hub import write_hub
    from visionzoo.inference.model_info import ModelInfo

    model, _ = tiny_teacher_file
    info = ModelInfo("test_efficientnet", 3, 32, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3, ["a", "b", "c"])
    write_hub(model, info, tmp_path)
    teacher = load_teacher(str(tmp_path), None, False, ["a", "b", "c"], torch.device("cpu"), IMAGENET_MEAN,
                           IMAGENET_STD)
    x = torch.randn(2, 3, 32, 32)
    # the folder's own normalisation (0.5/0.5) is the teacher's
    want = model((x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
                  - 0.5) / 0.5)
    assert torch.allclose(teacher(x), want, atol=1e-4)
    with pytest.raises(ConfigError, match="teacher class 0 is 'a', the data's class 0 is 'c'"):
        load_teacher(str(tmp_path), None, False, ["c", "b", "a"], torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("classes, message", [
    (["a", "b"], r"^teacher \S+best.pth has 3 classes, the data has 2$"),
    (["a", "c", "b"], r"^teacher class 1 is 'b', the data's class 1 is 'c' \(teacher \S+best.pth\)$"),
])
def test_class_mismatch_is_one_line(tiny_teacher_file, classes, message):
    _, run = tiny_teacher_file
    with pytest.raises(ConfigError, match=message) as e:
        load_teacher(str(run), None, False, classes, torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD)
    assert "\n" not in str(e.value)


def test_not_a_model_is_a_model_file_error(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    with pytest.raises(ModelFileError, match="notes.pth") as e:
        load_teacher(str(text), "test_efficientnet", False, ["a"], torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelFileError, match="no such file"):
        load_teacher(str(tmp_path / "missing.pth"), None, False, ["a"], torch.device("cpu"), IMAGENET_MEAN,
                     IMAGENET_STD)
    # ImageNet weights teach ImageNet's classes only (refused before any download)
    with pytest.raises(ConfigError, match="ImageNet's 1000 classes, the data has 3"):
        load_teacher("resnet18", None, True, ["a", "b", "c"], torch.device("cpu"), IMAGENET_MEAN, IMAGENET_STD)


def test_teacher_digest(tiny_teacher_file, tmp_path):
    _, run = tiny_teacher_file
    assert teacher_digest(str(run)) == teacher_digest(str(run / "best.pth"))
    other = tmp_path / "other.pth"
    other.write_bytes((run / "best.pth").read_bytes() + b"x")
    assert teacher_digest(str(other)) != teacher_digest(str(run))
    assert teacher_digest("resnet18", True) != teacher_digest("resnet18", False)
    assert len(teacher_digest("resnet18", True)) == 64


def test_prepare_student_for_token_mode():
    from timm.models.deit import VisionTransformerDistilled

    model = VisionTransformerDistilled(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    prepare_student(model, "token")
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 3), (2, 3)]
    with pytest.raises(ConfigError, match="distillation token"):
        prepare_student(tiny_cnn(), "token")
    prepare_student(tiny_cnn(), "logit")  # nothing to do


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="not one of"):
        DistillCriterion(Criterion(), "soft")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        DistillCriterion(Criterion(), "logit", alpha=1.5)
    with pytest.raises(ConfigError, match="positive"):
        DistillCriterion(Criterion(), "logit", temperature=0)
    with pytest.raises(ConfigError, match="feature tap"):
        DistillCriterion(Criterion(), "feature")
