"""TLCutMix+pick (seed 001 §3.2): build a pool of CutMix candidates and keep the hardest as the TL view.

Active learning with the teacher as oracle: `runs` independent CutMix runs of the batch (each with its own
λ, box and derangement) give runs·B candidates; each is scored without gradient, by default by the
per-sample KL(σ_τ(t) ‖ σ_τ(s)) (Eq. 3, no τ²), and the `n_pick` highest-scoring ones (default: the batch
size) become view ``mix``, supervised by the teacher only. The teacher's pool logits of the kept images
are handed on as ``View.teacher_logits`` (the teacher is deterministic in eval mode), so the trainer does
not run the teacher on them again. Per epoch, metrics.csv gets the average KL ratio r of Eq. 4 (mean
score of the picked / mean score of the whole pool), ``pick_kl_ratio``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datakd.api.context import StepContext, View
from datakd.augmenters import mixing
from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.augmenters.tl import cutmix_batch, main_view
from datakd.data.loaders import Batch
from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.losses import functional as LF

CRITERIA = ("kld", "teacher_entropy", "student_entropy")
SCORE_MODES = ("train", "eval")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of softmax(logits) at temperature 1 (nats)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def pick_scores(
    criterion: str,
    teacher_logits: torch.Tensor | None,
    student_logits: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Hardness of every candidate: KL(σ_τ(t) ‖ σ_τ(s)) without τ², or the teacher's / student's entropy."""
    if criterion == "teacher_entropy":
        return entropy(_required(teacher_logits, "teacher", criterion))
    if criterion == "student_entropy":
        return entropy(_required(student_logits, "student", criterion))
    if criterion == "kld":
        targets = F.softmax(_required(teacher_logits, "teacher", criterion).float() / temperature, dim=1)
        student = _required(student_logits, "student", criterion)
        return LF.kl_to_targets(student, targets, temperature, reduction="none", scale_tau2=False)
    raise choice_error("pick criterion", criterion, CRITERIA, ConfigError)


def _required(logits: torch.Tensor | None, model: str, criterion: str) -> torch.Tensor:
    if logits is None:
        raise DatakdError(f"pick criterion {criterion!r} needs the {model}'s logits")
    return logits


def score_ratio(scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean score of the kept candidates over the mean score of all (1 when every score is 0)."""
    scores = scores.double()
    overall = scores.mean()
    ratio = scores[kept].mean() / overall.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(overall > 0, ratio, torch.ones_like(ratio))


@register_augmenter("tlcutmix_pick")
class TLCutMixPick(Augmenter):
    """TLCutMix+pick (seed 001): `runs` CutMix runs, keep the `n_pick` hardest (KL t‖s) as TL view `mix`."""

    view_names = ("main", "mix")

    def __init__(
        self,
        runs: int = 2,
        n_pick: int | None = None,
        criterion: str = "kld",
        temperature: float = 4.0,
        score_mode: str = "train",
        alpha: float = 1.0,
        partners: str = "derangement",
    ) -> None:
        super().__init__()
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ConfigError(f"tlcutmix_pick.runs must be a positive integer, got {runs!r}")
        if n_pick is not None and (isinstance(n_pick, bool) or not isinstance(n_pick, int) or n_pick < 1):
            raise ConfigError(
                f"tlcutmix_pick.n_pick must be a positive integer or null (= batch size), got {n_pick!r}"
            )
        if criterion not in CRITERIA:
            raise choice_error("tlcutmix_pick.criterion", criterion, CRITERIA, ConfigError)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"tlcutmix_pick.temperature must be positive, got {temperature!r}")
        if score_mode not in SCORE_MODES:
            raise choice_error("tlcutmix_pick.score_mode", score_mode, SCORE_MODES, ConfigError)
        if partners not in mixing.PARTNERS:
            raise choice_error("tlcutmix_pick.partners", partners, mixing.PARTNERS, ConfigError)
        self.runs = runs
        self.n_pick = n_pick
        self.criterion = criterion
        self.temperature = float(temperature)
        self.score_mode = score_mode
        self.alpha = mixing.check_alpha(alpha, "tlcutmix_pick")
        self.partners = partners

    @property
    def ratio_name(self) -> str:
        """The metrics.csv column of Eq. 4's ratio r for this criterion."""
        return "pick_kl_ratio" if self.criterion == "kld" else f"pick_{self.criterion}_ratio"

    def candidates(self, images: torch.Tensor) -> torch.Tensor:
        """The pool: `runs` independent CutMix runs of the batch, concatenated (runs·B images)."""
        return torch.cat([cutmix_batch(images, self.alpha, self.partners)[0] for _ in range(self.runs)])

    def score(self, pool: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores of the pool and, when the criterion ran the teacher, its logits on the pool."""
        t_logits = s_logits = None
        if self.criterion in ("kld", "teacher_entropy"):
            if ctx.teacher is None:
                raise DatakdError(
                    f"augmenter tlcutmix_pick (criterion {self.criterion!r}) needs a teacher: "
                    "use `datakd distill` with --teacher-checkpoint"
                )
            t_logits = ctx.teacher_logits(pool)
        if self.criterion in ("kld", "student_entropy"):
            s_logits = ctx.student_logits(pool, train_mode=self.score_mode == "train")
        return pick_scores(self.criterion, t_logits, s_logits, self.temperature), t_logits

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        pool = self.candidates(batch.images)
        scores, t_logits = self.score(pool, ctx)
        k = min(self.n_pick or len(batch), pool.shape[0])
        kept = torch.topk(scores, k).indices
        ctx.log(self.ratio_name, score_ratio(scores, kept))
        mixed = View("mix", pool[kept], None, teacher_logits=None if t_logits is None else t_logits[kept])
        return [main_view(batch), mixed]

    def extra_repr(self) -> str:
        return (
            f"runs={self.runs}, n_pick={self.n_pick}, criterion={self.criterion!r}, "
            f"temperature={self.temperature}, score_mode={self.score_mode!r}"
        )
