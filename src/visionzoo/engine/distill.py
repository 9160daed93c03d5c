"""Knowledge distillation: a frozen teacher's outputs as a second target for the student (issue 25).

The pieces the trainer wires in: the losses (pure functions on tensors), `DistillCriterion` (called as the task
`Criterion` is, with the teacher's output for the same batch set first), `Teacher` (a frozen model that turns the
student's normalised, mixed batch into its own input on the device: "consistent teaching", Beyer et al. 2022) and
`load_teacher` (any file visionzoo loads, its classes checked against the data's). Modes follow timm's
distillation tasks: logit (Hinton et al. 2015), hard (DeiT's hard-label), token (DeiT's distillation token) and
feature (an MSE on pooled features through a learned projection).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig, spelled
from ..core.errors import ConfigError, ModelFileError
from ..models import Checkpoint, create_model, get_model_cfg, load_state_dict_file, model_cfg_of, unwrap_model
from ..models.weights import check_tensors, head_size, read_weights_only
from .objective import Criterion

MODES = ("logit", "hard", "token", "feature")
IMAGENET_CLASSES = 1000


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean (as timm's): T^2 keeps the gradients' scale independent
    of T (Hinton et al. 2015). Computed in float32: bf16 log-probabilities lose the small differences KD is about."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def hard_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CE against the teacher's top class (DeiT's hard distillation: no temperature to tune)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


def feature_kd_loss(projected_student: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """MSE between the projected student features and the teacher's pooled features (timm's feature task)."""
    return F.mse_loss(projected_student.float(), teacher_features.float())


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final Linear layer, whose input is the pooled (pre-logits) feature: timm's get_classifier(), else the
    ModelCfg's classifier path (torchvision's fc, classifier.1, ...)."""
    inner = unwrap_model(model)
    get = getattr(inner, "get_classifier", None)
    layer = get() if callable(get) else None
    if not isinstance(layer, nn.Linear):
        path = model_cfg_of(inner).classifier
        path = path if isinstance(path, str) else (path[0] if path else "")
        layer = inner.get_submodule(path) if path else None
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{spelled('distill', 'feature')}: {getattr(inner, 'visionzoo_name', type(inner).__name__)} "
                          "has no final Linear classifier whose input is a pooled feature")
    return layer


class FeatureTap:
    """Keeps the input of a model's final Linear (its pooled features) from each forward, by a forward pre-hook.

    A hook rather than a wrapper module: the model's state-dict keys, DDP and checkpoints stay as they are, and
    one forward gives both logits and features. (Classifier dropout, where a model has it, is inside the tap.)"""

    def __init__(self, model: nn.Module):
        self.model = model
        layer = classifier_of(model)
        self.dim = layer.in_features
        self._features: torch.Tensor | None = None
        self._handle = layer.register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._features = inputs[0].flatten(1)

    def take(self) -> torch.Tensor:
        """The last forward's features, once (a stale batch's features are never used twice)."""
        if self._features is None:
            raise RuntimeError("no features tapped: run the model's forward first")
        features, self._features = self._features, None
        return features

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled features) from one forward."""
        out = self.model(x)
        return (out[0] if isinstance(out, tuple) else out), self.take()

    def remove(self) -> None:
        self._handle.remove()


class DistillCriterion(nn.Module):
    """The task `Criterion` plus a distillation term, called as Criterion is: `criterion(output, target) ->
    (loss, logits)`. The teacher's output for the same batch comes first, by `set_teacher(teacher(x))` (so the
    step's existing call stays as it is), or as the third argument. It is used by one call only.

    logit: (1-alpha)*task + alpha*KD(T).  hard: 0.5*task + 0.5*CE(student, teacher argmax) (DeiT).
    token: output (cls, dist): 0.5*task(cls) + 0.5*KD(dist) (soft with T, or hard with token_hard), logits for
    accuracy (cls+dist)/2 as timm's evaluation.  feature: task + alpha*MSE(proj(student features), teacher
    features); the student's features come from `student_tap`, the teacher's output is (logits, features), and the
    projection (a Linear where the widths differ, as timm's) is trained: give `extra_parameters()` to the optimizer.
    The task part is always the Criterion, so soft (mixup/cutmix) targets and label smoothing work in every mode.
    """

    def __init__(self, task: Criterion, mode: str = "logit", alpha: float = 0.5, temperature: float = 4.0,
                 token_hard: bool = False, student_tap: FeatureTap | None = None, teacher_dim: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"{spelled('distill', mode)}: not one of {', '.join(MODES)}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"{spelled('kd_alpha', alpha)}: the distillation weight is between 0 and 1")
        if not temperature > 0:
            raise ConfigError(f"{spelled('kd_temperature', temperature)}: the temperature must be positive")
        if mode == "feature" and (student_tap is None or teacher_dim is None):
            raise ConfigError(f"{spelled('distill', 'feature')} needs the student's feature tap and the teacher's "
                              "feature width")
        self.task, self.mode, self.alpha, self.temperature, self.token_hard = task, mode, alpha, temperature, token_hard
        self.student_tap = student_tap
        self.projection: nn.Module | None = None
        if mode == "feature" and student_tap is not None and student_tap.dim != teacher_dim:
            with torch.random.fork_rng(devices=[]):  # its init leaves the run's RNG where it was
                self.projection = nn.Linear(student_tap.dim, int(teacher_dim or 0))
        self._teacher: Any = None

    def extra_parameters(self) -> list[nn.Parameter]:
        """The projection's parameters (feature mode): trained with the student's, saved with the run."""
        return list(self.projection.parameters()) if self.projection is not None else []

    def set_teacher(self, teacher_output: Any) -> None:
        self._teacher = teacher_output

    def forward(self, output: Any, target: torch.Tensor,
                teacher_output: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self._teacher if teacher_output is None else teacher_output
        self._teacher = None
        if teacher is None:
            raise RuntimeError("DistillCriterion: no teacher output for this batch (call set_teacher first)")
        if self.mode == "token":
            if not isinstance(output, tuple) or len(output) != 2:
                raise RuntimeError("distill token: the student must return (cls_logits, dist_logits) in training "
                                   "(prepare_student sets timm's distilled training)")
            cls_logits, dist_logits = output
            task, _ = self.task(cls_logits, target)
            kd = (hard_kd_loss(dist_logits, teacher) if self.token_hard
                  else logit_kd_loss(dist_logits, teacher, self.temperature))
            return 0.5 * task + 0.5 * kd, (cls_logits + dist_logits) / 2
        if self.mode == "feature":
            assert self.student_tap is not None
            features = self.student_tap.take()
            task, logits = self.task(output[0] if isinstance(output, tuple) else output, target)
            if self.alpha == 0:
                return task, logits
            projected = self.projection(features) if self.projection is not None else features
            return task + self.alpha * feature_kd_loss(projected, teacher[1]), logits
        task, logits = self.task(output, target)  # a tuple output (OLTR's features) goes to the task loss whole
        if self.mode == "hard":
            return 0.5 * task + 0.5 * hard_kd_loss(logits, teacher), logits
        if self.alpha == 0:  # exactly the task loss, whatever the teacher says
            return task, logits
        return (1 - self.alpha) * task + self.alpha * logit_kd_loss(logits, teacher, self.temperature), logits


def prepare_student(model: nn.Module, mode: str) -> None:
    """Token mode: switch timm's distilled models (deit_*_distilled) to return (cls, dist) in training."""
    if mode != "token":
        return
    inner = unwrap_model(model)
    enable = getattr(inner, "set_distilled_training", None)
    if not callable(enable):
        raise ConfigError(f"{spelled('distill', 'token')} needs a student with a distillation token "
                          f"(deit_*_distilled), not {getattr(inner, 'visionzoo_name', type(inner).__name__)}")
    enable(True)


def _stats(values: Any) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, 3, 1, 1)


class Teacher(nn.Module):
    """A frozen model with its own normalisation and input size, fed the student's batch.

    The student's batch is normalised with the student's mean/std; x*std_s + mean_s undoes that and the teacher's
    own normalisation follows. Mixup/cutmix are linear in the pixels, so renormalising the mixed batch equals
    mixing the teacher-normalised images: the teacher sees exactly what the student sees. A different input size
    is a bilinear, antialiased resize on the device. Always eval mode (dropout off, norm statistics fixed), even
    when a parent module is switched to training; no gradients.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, student_mean: Any, student_std: Any, mean: Any = None, std: Any = None,
                 img_size: int | None = None, channels_last: bool = False, features: bool = False):
        super().__init__()
        cfg = model_cfg_of(model) if mean is None or std is None else None
        mean_t = _stats(mean if mean is not None else cfg.mean)  # type: ignore[union-attr]
        std_t = _stats(std if std is not None else cfg.std)  # type: ignore[union-attr]
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tap = FeatureTap(model) if features else None
        self.same_norm = bool(torch.equal(_stats(student_mean), mean_t) and torch.equal(_stats(student_std), std_t))
        # x_t = x_s * scale + shift, one fused affine: scale = std_s / std_t, shift = (mean_s - mean_t) / std_t
        self.register_buffer("scale", _stats(student_std) / std_t, persistent=False)
        self.register_buffer("shift", (_stats(student_mean) - mean_t) / std_t, persistent=False)
        self.img_size = img_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> Teacher:
        super().train(mode)
        self.model.eval()
        return self

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch as this teacher's input."""
        if not self.same_norm:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if self.img_size is not None and tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Any:
        """Logits, or (logits, pooled features) for feature mode."""
        out = self.model(self.teacher_input(x))
        logits = out[0] if isinstance(out, tuple) else out
        return (logits, self.tap.take()) if self.tap is not None else logits


def _check_classes(label: str, teacher: list[str] | None, count: int, data: list[str]) -> None:
    """The teacher's classes must be the data's, in the data's order: one line naming the first difference."""
    if count != len(data):
        raise ConfigError(f"teacher {label} has {count} classes, the data has {len(data)}")
    for i, (t, d) in enumerate(zip(teacher or [], data)):
        if t != d:
            raise ConfigError(f"teacher class {i} is {t!r}, the data's class {i} is {d!r} (teacher {label})")


def _imagenet_synsets() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def _read(path: Path) -> Any:
    return read_weights_only(path, f"teacher {path}", f"teacher {path} is empty (0 bytes)")


def _bare(path: Path, model_name: str | None) -> tuple[nn.Module, None]:
    """A state dict or .safetensors: the architecture from model_name, the class count from the head's tensors."""
    if not model_name:
        raise ConfigError(f"teacher {path} is a bare state dict: name its architecture with "
                          f"{spelled('teacher_model')}")
    sd = load_state_dict_file(path)
    n = head_size(sd, get_model_cfg(model_name).classifier) or head_size(sd, ("fc", "classifier", "head",
                                                                              "head.fc", "classifier.1"))
    if n is None:
        raise ModelFileError(f"teacher {path}: no classifier weights found for {model_name}")
    model = create_model(model_name, num_classes=n)
    check_tensors(sd, model.state_dict(), path)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise ModelFileError(f"teacher {path}: the weights do not fit {model_name} ({first})") from None
    return model, None


def load_teacher(source: str, model_name: str | None, pretrained: bool, class_names: list[str],
                 device: torch.device, student_mean: Any, student_std: Any, img_size: int | None = None,
                 channels_last: bool = False, features: bool = False) -> Teacher:
    """The teacher from a visionzoo checkpoint or run folder (best.pth), a bare state dict or .safetensors
    (model_name), a hub-layout folder (config.json + model.safetensors), or a model name with pretrained
    (ImageNet's 1000 classes); its classes checked against the data's (names where the source records them,
    else the count). img_size: the teacher's input size (None: the student's batch size as it is)."""
    path = Path(source)
    classes: list[str] | None
    if path.is_dir() and (path / "best.pth").is_file():
        path = path / "best.pth"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFileError(f"teacher {path}: a folder with neither best.pth (a run) nor config.json (hub)")
        name = f"local-dir:{path}"
        model = create_model(name, pretrained=True)
        labels = model_cfg_of(model).label_names
        classes = list(labels) if labels else None
    elif path.is_file():
        obj = None if path.suffix == ".safetensors" else _read(path)
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and obj.get("model_name"):
            ckpt = Checkpoint.from_dict(obj, path)
            if model_name and model_name != ckpt.model_name:
                raise ConfigError(f"teacher {path} is a {ckpt.model_name} checkpoint, {spelled('teacher_model')} "
                                  f"says {model_name}")
            model, classes = ckpt.build_model(path), ckpt.classes
        else:
            model, classes = _bare(path, model_name)
    elif pretrained:
        if len(class_names) != IMAGENET_CLASSES:
            raise ConfigError(f"teacher {source} with pretrained weights knows ImageNet's {IMAGENET_CLASSES} "
                              f"classes, the data has {len(class_names)}: fine-tune a teacher on the data first")
        model = create_model(source, pretrained=True)
        synset = all(re.fullmatch(r"n\d{8}", c) for c in class_names)  # an ImageNet folder: compare the ids
        classes = _imagenet_synsets() if synset else None
    else:
        raise ModelFileError(f"teacher {source}: no such file or folder (a model name needs pretrained weights)")
    head = model_cfg_of(model).num_classes
    _check_classes(str(path) if path.exists() else source, classes, len(classes) if classes else head, class_names)
    return Teacher(model, student_mean, student_std, img_size=img_size, channels_last=channels_last,
                   features=features).to(device)


def teacher_digest(source: str, pretrained: bool = False) -> str:
    """sha256 of the teacher's weights file (a run folder's best.pth, a hub folder's config.json and
    model.safetensors), or of the name and pretrained flag for a hub name: what an exact resume compares."""
    path = Path(source)
    if path.is_dir() and (path / "best.pth").is_file():
        path = path / "best.pth"
    files = [path] if path.is_file() else sorted(p for p in (path / "config.json", path / "model.safetensors")
                                                  if p.is_file()) if path.is_dir() else []
    h = hashlib.sha256()
    if not files:
        h.update(f"{source}:pretrained={pretrained}".encode())
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Distillation:
    """One run's distillation: the teacher (on the device, frozen), the student prepared for the mode (token:
    two heads in training; feature: a tap on its classifier's input) and the teacher's digest for resumes."""

    def __init__(self, kd: DistillConfig, student: nn.Module, class_names: list[str], device: torch.device,
                 channels_last: bool = False, compile: bool = False):
        self.kd, self.source = kd, str(kd.teacher)
        prepare_student(student, kd.distill)
        self.tap = FeatureTap(student) if kd.distill == "feature" else None
        cfg = model_cfg_of(student)
        # building the teacher initialises a model (its weights then loaded): on a forked CPU generator, so the
        # run's RNG (mixup's draws, ...) is where it would be without a teacher; kd_alpha 0 is then that run
        with torch.random.fork_rng(devices=[]):
            self.teacher = load_teacher(self.source, kd.teacher_model, kd.teacher_pretrained, class_names, device,
                                        cfg.mean, cfg.std, img_size=kd.teacher_img_size,
                                        channels_last=channels_last, features=self.tap is not None)
        if compile:
            self.teacher.model = torch.compile(self.teacher.model)  # type: ignore[assignment]
        self.digest = teacher_digest(self.source, kd.teacher_pretrained)

    def criterion(self, task: Criterion) -> DistillCriterion:
        teacher_tap = self.teacher.tap
        return DistillCriterion(task, self.kd.distill, self.kd.kd_alpha, self.kd.kd_temperature,
                                self.kd.kd_token_hard, self.tap, teacher_tap.dim if teacher_tap else None)

    def record(self) -> dict[str, str]:
        """What the checkpoint keeps of the teacher (a resume must use the same one)."""
        return {"source": self.source, "digest": self.digest, "mode": self.kd.distill}

    def check_resume(self, saved: dict[str, str] | None, path: Any) -> None:
        """A resumed run continues with the teacher it started with (the same file, by digest) and mode."""
        if saved is None:
            raise ConfigError(f"{spelled('resume', str(path))} was trained without a teacher: a run cannot start "
                              f"distilling half-way ({spelled('teacher')} starts a new run)")
        if saved.get("digest") != self.digest:
            raise ConfigError(f"{spelled('resume', str(path))} was distilled from {saved.get('source')} (sha256 "
                              f"{str(saved.get('digest'))[:12]}), not {self.source} (sha256 {self.digest[:12]}): "
                              "resume with the same teacher")
        if saved.get("mode") != self.kd.distill:
            raise ConfigError(f"{spelled('resume', str(path))} was distilled with "
                              f"{spelled('distill', saved.get('mode'))}, not {self.kd.distill}")
