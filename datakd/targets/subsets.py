"""Sample subsets for EffDstl's analysis transforms: a tiny boolean grammar over per-sample atoms, and
the base class of transforms that rewrite the teacher's targets on such a subset only.

Atoms (recomputed every step from the run's teacher and the student, at the distillation temperature):
``correct`` (``cor``): the teacher's argmax is the label; ``regularization`` (``reg``): the student is more
confident on the label than the teacher; ``not_correct``, ``not_regularization``; ``all``; ``none``.
Combine them with ``&`` (and), ``|`` (or), ``!`` (not) and parentheses, e.g. ``reg&cor``, ``reg|cor``,
``!cor``, ``reg & !cor``. ``!`` binds tightest, then ``&``, then ``|``.
"""

from __future__ import annotations

import re

import torch

from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.targets import functional as TF
from datakd.targets.base import TargetInputs, TargetTransform

ATOMS = ("all", "none", "correct", "regularization", "not_correct", "not_regularization")
ALIASES = {
    "cor": "correct",
    "reg": "regularization",
    "not_cor": "not_correct",
    "not_reg": "not_regularization",
}
VALID = tuple(sorted((*ATOMS, *ALIASES)))

# An expression tree: an atom name, or (op, operand...) with op in "not", "and", "or".
Node = str | tuple

_TOKEN = re.compile(r"\s*(?:([A-Za-z_]+)|(.))")


def _tokens(text: str) -> list[str]:
    tokens = []
    for word, symbol in _TOKEN.findall(text):
        token = word or symbol
        if token.strip():
            tokens.append(token)
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(
            f"subset {self.text!r}: {problem}; valid atoms: {', '.join(VALID)}, combined with & | ! ( )"
        )

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end of expression")
        self.pos += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("empty expression")
        node = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r} at token {self.pos + 1}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() == "|":
            self.take()
            node = ("or", node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() == "&":
            self.take()
            node = ("and", node, self.factor())
        return node

    def factor(self) -> Node:
        token = self.take()
        if token == "!":
            return ("not", self.factor())
        if token == "(":
            node = self.expr()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.take()
            return node
        name = ALIASES.get(token.lower(), token.lower())
        if name not in ATOMS:
            if not re.fullmatch(r"[A-Za-z_]+", token):
                raise self.fail(f"unexpected {token!r}")
            error = choice_error("subset atom", token, VALID, ConfigError)
            raise ConfigError(f"subset {self.text!r}: {error}; combine atoms with & | ! ( )")
        return name


def parse_subset(text: str) -> Node:
    """The expression tree of `text`; a one-line ConfigError names what is wrong and the valid atoms."""
    if not isinstance(text, str):
        raise ConfigError(f"subset must be a string such as 'reg&cor', got {text!r}")
    return _Parser(text).parse()


def evaluate(node: Node, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The boolean (B,) mask of the expression, given masks for ``correct`` and ``regularization``."""
    if isinstance(node, str):
        reference = masks["correct"]
        if node == "all":
            return torch.ones_like(reference)
        if node == "none":
            return torch.zeros_like(reference)
        if node.startswith("not_"):
            return ~masks[node[4:]]
        return masks[node]
    op, *children = node
    values = [evaluate(child, masks) for child in children]
    if op == "not":
        return ~values[0]
    if op == "and":
        return values[0] & values[1]
    return values[0] | values[1]


class Subset:
    """A parsed subset expression: ``Subset("reg&cor").mask({"correct": c, "regularization": r})``."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tree = parse_subset(expression)

    def mask(self, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        return evaluate(self.tree, masks)

    def __repr__(self) -> str:
        return f"Subset({self.expression!r})"


def require_labels(inputs: TargetInputs, kind: str) -> torch.Tensor:
    if inputs.labels is None:
        raise DatakdError(
            f"target transform {kind!r} needs hard labels, but this view has none; "
            "limit it to labelled views with target_transform.views"
        )
    return inputs.labels


def subset_stats(
    masks: dict[str, torch.Tensor], chosen: torch.Tensor, new: torch.Tensor, old: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-step fractions logged as ``target_frac_*``: the atoms, the chosen subset, the rows changed."""
    changed = (new - old).abs().amax(dim=1) > 1e-6
    return {
        "frac_correct": masks["correct"].float().mean(),
        "frac_regularization": masks["regularization"].float().mean(),
        "frac_subset": chosen.float().mean(),
        "frac_rewritten": changed.float().mean(),
    }


class SubsetTransform(TargetTransform):
    """Rewrite the run teacher's σ_τ targets on a sample subset; elsewhere they stay unchanged.

    Subclasses implement `rewrite(inputs, labels, teacher_probs, student_probs) -> B×K`, all at the
    requesting term's temperature τ; the subset atoms use the same probabilities.
    """

    kind = "subset transform"

    def __init__(self, subset: str = "all", views: list[str] | None = None) -> None:
        super().__init__(views)
        self.subset = Subset(subset)

    def rewrite(
        self,
        inputs: TargetInputs,
        labels: torch.Tensor,
        teacher_probs: torch.Tensor,
        student_probs: torch.Tensor,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, inputs: TargetInputs) -> torch.Tensor:
        labels = require_labels(inputs, self.kind)
        teacher = torch.softmax(inputs.teacher_logits.float() / inputs.temperature, dim=1)
        student = torch.softmax(inputs.student_logits.float() / inputs.temperature, dim=1)
        masks = {
            "correct": TF.correct_mask(teacher, labels),
            "regularization": TF.regularization_mask(student, teacher, labels),
        }
        chosen = self.subset.mask(masks)
        rewritten = self.rewrite(inputs, labels, teacher, student)
        targets = torch.where(chosen.view(-1, 1), rewritten, teacher)
        self.stats = subset_stats(masks, chosen, targets, teacher)
        return targets

    def extra_repr(self) -> str:
        return f"subset={self.subset.expression!r}, views={list(self.views)}"
