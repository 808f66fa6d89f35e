"""Role-wise KD's distillation terms (Fu et al. 2020, §5.2): `iikd` and the Table 1 baselines `rkd_logits`,
`kd_svd`, `mhgd`.

II-KD = RKD on L2-normalised logits (intra-relation, weights 50/100) + KD-SVD + MHGD between consecutive
feature taps (inter-relation), one term so that its gradient is clipped as a whole. The released code
combines the gradients per student parameter as

    g = g_CE + clip_by_norm(g_dist, ‖g_CE‖ · s(epoch)),    s(e) = 1 / (1 + e^(−e)),

with g_dist the gradient of the *unweighted* distillation loss (λ is only logged there). ``clip`` chooses:
``unweighted`` (released code, default), ``weighted`` (the paper: λ·g_dist before clipping; the two agree
whenever the clip is active) or ``none`` (plain λ·g_dist). Weight decay is the optimizer's, added outside the
clip as in the code. Parameters the other terms do not touch (connectors) get their plain weighted gradient.

MHGD's attention heads are fixed at random initialisation in role-kd (their training op is never run);
``mhgd_head_warmup_epochs > 0`` instead trains them (and MHGD's estimator) on teacher features for that many
epochs, as the original MHGD does before distilling, with the MHGD part switched off meanwhile and the clip
schedule shifted by the warm-up (the released code's ``sigmoid(epoch − init_epoch)``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.api.features import stage_taps
from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.losses import iikd_functional as IF
from datakd.losses.base import LossTerm, as_list, register_loss
from datakd.registry import accepted_kwargs

CLIP_MODES = ("unweighted", "weighted", "none")
TEACHER_VECTORS = 1  # KD-SVD/MHGD keep the teacher's leading singular vector ...
STUDENT_CANDIDATES = 4  # ... and the best-matching of the student's four leading ones


class ClippedGradient:
    """The released code's per-parameter rule for combining a distillation gradient with the CE gradient."""

    clip: str = "unweighted"
    clip_offset: float = 0.0
    weight: float

    def inert_weight_reason(self) -> str | None:
        if self.clip != "unweighted":
            return None
        return (
            f"{self.term_name} uses clip: unweighted (the released code), which divides its gradient by the "
            "weight before clipping, so the weight reaches only parameters no other term trains (connectors) "
            "and 0 switches the term off; set clip: weighted for the paper's Eq. 10"
        )

    def combine_gradient(
        self, param: nn.Parameter, own: torch.Tensor | None, rest: torch.Tensor | None, epoch: int
    ) -> torch.Tensor | None:
        if own is None:
            return rest
        if rest is None or self.clip == "none":
            return own if rest is None else own + rest
        g = own / self.weight if self.clip == "unweighted" else own
        bound = rest.norm() * IF.clip_schedule(epoch - self.clip_offset)
        return rest + IF.clip_by_norm(g, bound)


def _check_clip(clip: str, name: str) -> str:
    if clip not in CLIP_MODES:
        raise ConfigError(f"{name}.clip {clip!r} is not one of {', '.join(CLIP_MODES)}")
    return clip


class AttentionHead(nn.Module):
    """MHGD's multi-head attention graph: per head the B×B matrix ⟨FC+BN(key), FC+BN(query)⟩."""

    def __init__(self, key_dim: int, query_dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads = width, heads
        self.sender = nn.Linear(key_dim, width * heads)
        self.sender_bn = nn.BatchNorm1d(width * heads, eps=1e-3, momentum=0.01)
        self.receiver = nn.Linear(query_dim, width * heads)
        self.receiver_bn = nn.BatchNorm1d(width * heads, eps=1e-3, momentum=0.01)
        for fc in (self.sender, self.receiver):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, key: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        b = key.shape[0]
        sender = self.sender_bn(self.sender(key)).view(b, self.width, self.heads).permute(2, 0, 1)
        receiver = self.receiver_bn(self.receiver(query)).view(b, self.width, self.heads).permute(2, 1, 0)
        return sender @ receiver  # heads × B × B


class Estimator(nn.Module):
    """MHGD's head trainer: predict V_i from V_{i−1} through the (softmaxed, head-dropped) graph."""

    def __init__(self, in_dim: int, out_dim: int, heads: int) -> None:
        super().__init__()
        hidden = (in_dim + out_dim) // 2
        self.heads = heads
        self.fc0 = nn.Linear(in_dim, hidden)
        self.bn0 = nn.BatchNorm1d(hidden, eps=1e-3, momentum=0.01)
        self.fc1 = nn.Linear(hidden * heads, out_dim)
        for fc in (self.fc0, self.fc1):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, previous: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        heads, b, _ = graph.shape
        noise = torch.randn(heads, b, 1, device=graph.device)
        keep = (noise - noise.mean(dim=0, keepdim=True) > 0).to(graph.dtype)  # drop about half the heads
        g = (torch.softmax(graph, dim=-1) * keep).reshape(heads * b, b)
        x = torch.relu(self.bn0(self.fc0(previous)))
        x = (g @ x).view(heads, b, -1).transpose(0, 1).reshape(b, -1)
        return IF.l2_normalize(self.fc1(x), dim=-1)


def _connector(in_channels: int, out_channels: int, spatial: bool) -> nn.Module:
    if spatial:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
    return nn.Linear(in_channels, out_channels, bias=False)


class Part:
    """One piece of a relational term; a term sums its parts in the order it lists them.

    A part owns its recipe options (its constructor's keywords) and adds its value to the running total;
    the modules it needs (MHGD's heads) are built on the term, so checkpoints keep one layout for every
    term. `reads_features`: the part needs the taps' singular vectors (KD-SVD, MHGD), not only logits.
    """

    key: ClassVar[str]
    reads_features: ClassVar[bool] = True

    def build(self, term: RelationalDistillation, widths: list[int]) -> None:
        """Create the part's modules on `term` from the teacher taps' channel counts (setup)."""

    def add(
        self, term: RelationalDistillation, total: torch.Tensor, inputs: TermInputs, vectors: Vectors | None
    ) -> torch.Tensor:
        raise NotImplementedError


class RKDPart(Part):
    """RKD distance + angle on L2-normalised logits (intra-relation)."""

    key = "rkd"
    reads_features = False

    def __init__(self, distance_weight: float = 50.0, angle_weight: float = 100.0) -> None:
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def add(
        self, term: RelationalDistillation, total: torch.Tensor, inputs: TermInputs, vectors: Vectors | None
    ) -> torch.Tensor:
        assert inputs.teacher_logits is not None
        distance, angle = IF.rkd_logits(
            inputs.student_logits.float(),
            inputs.teacher_logits.float(),
            self.distance_weight,
            self.angle_weight,
        )
        inputs.log(f"{term.term_name}_rkd", (distance + angle).detach())
        return total + distance + angle


class SVDPart(Part):
    """KD-SVD between consecutive taps' leading singular vectors (inter-relation)."""

    key = "svd"

    def add(
        self, term: RelationalDistillation, total: torch.Tensor, inputs: TermInputs, vectors: Vectors | None
    ) -> torch.Tensor:
        assert vectors is not None
        svd = IF.kd_svd(*vectors)
        inputs.log(f"{term.term_name}_svd", svd.detach())
        return total + svd


class MHGDPart(Part):
    """MHGD's multi-head graph KL between consecutive taps (random fixed heads, or warmed-up heads)."""

    key = "mhgd"

    def __init__(self, heads: int = 4, mhgd_head_warmup_epochs: int = 0, mhgd_head_lr: float = 1e-3) -> None:
        if heads < 1:
            raise ConfigError(f"heads must be at least 1, got {heads}")
        if mhgd_head_warmup_epochs < 0:
            raise ConfigError(f"mhgd_head_warmup_epochs must be >= 0, got {mhgd_head_warmup_epochs}")
        self.num_heads = heads
        self.warmup = int(mhgd_head_warmup_epochs)
        self.head_lr = mhgd_head_lr

    def build(self, term: RelationalDistillation, widths: list[int]) -> None:
        for i in range(1, len(widths)):
            width = (widths[i] + widths[i - 1]) // 2
            term.graph_heads.append(AttentionHead(widths[i], widths[i - 1], width, self.num_heads))
            term.estimators.append(Estimator(widths[i - 1], widths[i], self.num_heads))
        term.graph_heads.requires_grad_(False)  # never part of the student's optimizer
        term.estimators.requires_grad_(False)
        term.graph_heads.eval()

    def add(
        self, term: RelationalDistillation, total: torch.Tensor, inputs: TermInputs, vectors: Vectors | None
    ) -> torch.Tensor:
        assert vectors is not None
        students, teachers, _ = vectors
        if inputs.epoch < self.warmup:
            if torch.is_grad_enabled() and students[0].shape[0] > 1:
                inputs.log(f"{term.term_name}_mhgd_heads", term.train_heads(teachers, self.head_lr))
            return total
        mhgd = term.graph_loss(students, teachers)
        inputs.log(f"{term.term_name}_mhgd", mhgd.detach())
        return total + mhgd


Vectors = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]
SHARED_OPTIONS = ("student", "teacher", "clip", "connector")


class RelationalDistillation(ClippedGradient, LossTerm):
    """Shared machinery of iikd / kd_svd / mhgd: taps, singular vectors, MHGD heads, clipped gradients.

    A subclass lists its `part_types`; its recipe options are the shared ones (`student`, `teacher`,
    `clip`, `connector`) plus each part's constructor keywords, checked here with the valid choices.
    """

    custom_gradient = True
    part_types: ClassVar[tuple[type[Part], ...]] = ()
    registry_name: ClassVar[str] = ""

    def __init__(
        self,
        student: list[str] | str | None = None,
        teacher: list[str] | str | None = None,
        clip: str = "unweighted",
        connector: bool = False,
        **part_options: Any,
    ) -> None:
        LossTerm.__init__(self)
        name = type(self).registry_name
        self.clip = _check_clip(clip, name)
        self.parts = self._build_parts(name, part_options)
        mhgd = next((p for p in self.parts if isinstance(p, MHGDPart)), None)
        self.clip_offset = float(mhgd.warmup) if mhgd is not None else 0.0
        self.use_connector = connector
        self._student_arg, self._teacher_arg = student, teacher
        self.student_taps = as_list(student)
        self.teacher_taps = as_list(teacher) if teacher is not None else list(self.student_taps)
        self.connectors = nn.ModuleList()
        self.graph_heads = nn.ModuleList()
        self.estimators = nn.ModuleList()
        self._head_optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict[str, Any] | None = None

    @classmethod
    def _build_parts(cls, name: str, options: dict[str, Any]) -> list[Part]:
        accepted = set(SHARED_OPTIONS)
        for part_type in cls.part_types:
            accepted |= set(accepted_kwargs(part_type) or ())
        for key in options:
            if key not in accepted:
                raise choice_error(f"option of loss term {name!r}:", key, accepted, ConfigError)
        parts = []
        for part_type in cls.part_types:
            own = accepted_kwargs(part_type) or set()
            try:
                parts.append(part_type(**{k: v for k, v in options.items() if k in own}))
            except ConfigError as exc:
                raise ConfigError(f"{name}.{exc}") from None
        return parts

    @property
    def reads_features(self) -> bool:
        return any(part.reads_features for part in self.parts)

    # ------------------------------------------------------------------ setup
    def _default_taps(self, ctx: SetupContext) -> None:
        if self.student_taps:
            return
        stages = stage_taps(ctx.student)
        if len(stages) < 2:
            raise ConfigError(
                f"{self.term_name}: the student has no named stage taps; list them with "
                f"loss.{self.term_name}.student (and .teacher)"
            )
        self.student_taps = stages
        if self._teacher_arg is None:
            self.teacher_taps = list(stages)

    def setup(self, ctx: SetupContext) -> None:
        if not self.reads_features:
            return
        self._default_taps(ctx)
        if len(self.student_taps) != len(self.teacher_taps) or len(self.student_taps) < 2:
            raise ConfigError(
                f"{self.term_name}: needs the same number (at least 2) of student and teacher taps, got "
                f"{self.student_taps} and {self.teacher_taps}"
            )
        s_shapes = ctx.student_shapes(self.student_taps)
        t_shapes = ctx.teacher_shapes(self.teacher_taps)
        widths = []
        for s_tap, t_tap in zip(self.student_taps, self.teacher_taps):
            cs, ct = s_shapes[s_tap][0], t_shapes[t_tap][0]
            if cs != ct and not self.use_connector:
                raise ConfigError(
                    f"{self.term_name}: student tap {s_tap!r} has {cs} channels but teacher tap "
                    f"{t_tap!r} has {ct}; KD-SVD/MHGD compare them channel by channel (role-wise KD pairs "
                    f"a network with its quantised copy) - set loss.{self.term_name}.connector=true to add "
                    "1x1 connectors"
                )
            self.connectors.append(
                _connector(cs, ct, len(s_shapes[s_tap]) == 3) if cs != ct else nn.Identity()
            )
            widths.append(ct)
        for part in self.parts:
            part.build(self, widths)

    # ------------------------------------------------------------------ pieces
    def _vectors(self, inputs: TermInputs) -> Vectors:
        students, teachers, sigmas = [], [], []
        for s_tap, t_tap, connector in zip(self.student_taps, self.teacher_taps, self.connectors):
            fs = connector(inputs.student_features[s_tap].float())
            ft = inputs.teacher_features[t_tap].float().detach()
            with torch.no_grad():
                sigma_t, v_t = IF.leading_vectors(ft, TEACHER_VECTORS)
            _, v_s = IF.leading_vectors(fs, STUDENT_CANDIDATES)
            students.append(IF.align_to_teacher(v_s, v_t).squeeze(2))
            teachers.append(v_t.squeeze(2))
            sigmas.append(sigma_t.squeeze(1))
        return students, teachers, sigmas

    def graph_loss(self, students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
        self.graph_heads.eval()
        total = students[0].new_zeros(())
        for i, head in enumerate(self.graph_heads, start=1):
            g_s = torch.tanh(head(students[i], students[i - 1]))
            with torch.no_grad():
                g_t = torch.tanh(head(teachers[i], teachers[i - 1]))
            total = total + IF.graph_kl(g_s, g_t)
        return total

    def _head_params(self) -> list[nn.Parameter]:
        return [*self.graph_heads.parameters(), *self.estimators.parameters()]

    def train_heads(self, teachers: list[torch.Tensor], lr: float) -> torch.Tensor:
        """One step of MHGD's head pre-training on teacher vectors (cosine estimator loss + 5e-4·L2)."""
        params = self._head_params()
        if self._head_optimizer is None:
            self._head_optimizer = torch.optim.Adam(params, lr=lr)
            if self._pending_optimizer_state is not None:
                self._head_optimizer.load_state_dict(self._pending_optimizer_state)
                self._pending_optimizer_state = None
        for p in params:
            p.requires_grad_(True)
        self.graph_heads.train()
        self.estimators.train()
        try:
            with torch.enable_grad():
                loss = teachers[0].new_zeros(())
                for i, (head, estimator) in enumerate(zip(self.graph_heads, self.estimators), start=1):
                    graph = head(teachers[i].detach(), teachers[i - 1].detach())
                    predicted = estimator(teachers[i - 1].detach(), graph)
                    loss = loss + (1.0 - (predicted * teachers[i].detach()).sum(dim=-1)).mean()
                regulariser = 5e-4 * sum(p.pow(2).sum() for p in params)
                grads = torch.autograd.grad(loss + regulariser, params)
            for p, g in zip(params, grads):
                p.grad = g
            self._head_optimizer.step()
            self._head_optimizer.zero_grad(set_to_none=True)
        finally:
            for p in params:
                p.requires_grad_(False)
            self.graph_heads.eval()
            self.estimators.eval()
        return loss.detach()

    def get_extra_state(self) -> dict[str, Any]:
        state = self._head_optimizer.state_dict() if self._head_optimizer is not None else None
        return {"head_optimizer": state or self._pending_optimizer_state}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._head_optimizer = None
        self._pending_optimizer_state = (state or {}).get("head_optimizer")

    # ------------------------------------------------------------------ loss
    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if inputs.teacher_logits is None:
            raise DatakdError(f"loss term {self.term_name!r} needs a teacher")
        total = inputs.student_logits.sum() * 0.0  # stays in the graph when every part is off (warm-up)
        vectors: Vectors | None = None
        for part in self.parts:
            if part.reads_features and vectors is None:
                vectors = self._vectors(inputs)
            total = part.add(self, total, inputs, vectors)
        return total


@register_loss("iikd")
class IIKD(RelationalDistillation):
    """Role-wise KD's II-KD: RKD on logits + KD-SVD + MHGD, gradient clipped to the CE gradient's norm."""

    part_types = (RKDPart, SVDPart, MHGDPart)
    registry_name = "iikd"


@register_loss("kd_svd")
class KDSVD(RelationalDistillation):
    """KD-SVD (Lee et al. 2018) between consecutive taps, with role-kd's clipped gradient."""

    part_types = (SVDPart,)
    registry_name = "kd_svd"


@register_loss("mhgd")
class MHGD(RelationalDistillation):
    """MHGD (Lee & Song 2019) multi-head graph distillation, role-kd settings (random heads by default)."""

    part_types = (MHGDPart,)
    registry_name = "mhgd"


@register_loss("rkd_logits")
class RKDLogits(LossTerm):
    """RKD distance + angle potentials on L2-normalised logits (role-kd's RKD, weights 50/100, Huber δ=1)."""

    def __init__(self, distance_weight: float = 50.0, angle_weight: float = 100.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if inputs.teacher_logits is None:
            raise DatakdError(f"loss term {self.term_name!r} needs a teacher")
        distance, angle = IF.rkd_logits(
            inputs.student_logits.float(),
            inputs.teacher_logits.float(),
            self.distance_weight,
            self.angle_weight,
        )
        inputs.log(f"{self.term_name}_distance", distance.detach())
        inputs.log(f"{self.term_name}_angle", angle.detach())
        return distance + angle
