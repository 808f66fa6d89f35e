"""CRD: the memory bank (indexed momentum updates, class-aware sampling), the bounded queue, the NCE value
against an independent computation in RepDistiller's probability form, checkpointed state and clear
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datakd.api.context import TermInputs, View
from datakd.errors import DatakdError
from datakd.losses.base import build_terms
from datakd.losses.crd import ContrastiveRepresentation
from datakd.models import create
from tests.helpers import setup_context

N, CLASSES, DIM = 60, 4, 16
LABELS = torch.arange(N) % CLASSES


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    return create("resnet8", CLASSES, in_channels=1), create("resnet14", CLASSES, in_channels=1).eval()


def make_term(models, n: int = N, labels: torch.Tensor = LABELS, **options) -> ContrastiveRepresentation:
    (term,) = build_terms({"crd": {"feat_dim": DIM, "nce_k": 8, **options}})
    student, teacher = models
    ctx = setup_context(
        student,
        teacher,
        torch.randn(2, 1, 28, 28),
        num_classes=CLASSES,
        mean=(0.5,),
        std=(0.5,),
        num_train=n,
        train_labels=labels,
    )
    term.setup(ctx)
    return term


def inputs(fs: torch.Tensor, ft: torch.Tensor, labels=None, indices=None, name: str = "main") -> TermInputs:
    view = View(name, torch.zeros(fs.shape[0], 1, 28, 28), labels, indices=indices)
    logits = torch.zeros(fs.shape[0], CLASSES)
    return TermInputs(view, logits, logits, {"pre_logits": fs}, {"pre_logits": ft}, 0, 0, 0, 1, 1)


def features(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 64, generator=g), torch.rand(b, 64, generator=g)


# ----------------------------------------------------------------------------------------- bank


def test_bank_rows_at_the_batch_indices_get_the_momentum_update(models) -> None:
    term = make_term(models, momentum=0.5)
    fs, ft = features(3, 0)
    idx = torch.tensor([5, 17, 42])
    before_s, before_t = term.memory_s.clone(), term.memory_t.clone()
    term(inputs(fs, ft, LABELS[idx], idx))
    with torch.no_grad():
        vs, vt = term.embed_s(fs), term.embed_t(ft)
    for row, i in enumerate(idx.tolist()):
        expected_s = F.normalize(0.5 * before_s[i] + 0.5 * vs[row], dim=0)
        expected_t = F.normalize(0.5 * before_t[i] + 0.5 * vt[row], dim=0)
        assert torch.allclose(term.memory_s[i], expected_s, atol=1e-6)
        assert torch.allclose(term.memory_t[i], expected_t, atol=1e-6)
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(term.memory_s[untouched], before_s[untouched])
    assert torch.equal(term.memory_t[untouched], before_t[untouched])


def test_other_class_negatives_are_uniform_over_other_classes(models) -> None:
    term = make_term(models)
    torch.manual_seed(1)
    classes = torch.tensor([0, 1, 2, 3] * 50)
    neg = term.sample_negatives(classes, 300)
    assert not (LABELS[neg] == classes.unsqueeze(1)).any()
    # class 0 anchors: 45 candidate images, each expected 50·300/45 ≈ 333 times
    counts = torch.bincount(neg[classes == 0].flatten(), minlength=N)
    candidates = LABELS != 0
    assert (counts[~candidates] == 0).all()
    expected = 50 * 300 / int(candidates.sum())
    spread = 5 * math.sqrt(expected)
    assert ((counts[candidates] - expected).abs() < spread).all()


def test_negative_and_positive_sampling_modes(models) -> None:
    anywhere = make_term(models, negatives="any")
    torch.manual_seed(2)
    neg = anywhere.sample_negatives(torch.zeros(100, dtype=torch.long), 60)
    assert torch.bincount(neg.flatten(), minlength=N).min() > 0  # every image, own class included
    relax = make_term(models, positive="relax")
    idx = torch.arange(N).repeat(5)
    pos = relax.sample_positives(idx)
    assert torch.equal(LABELS[pos], LABELS[idx]) and not torch.equal(pos, idx)
    assert torch.equal(make_term(models).sample_positives(idx), idx)


def test_sampling_follows_the_torch_seed(models) -> None:
    term = make_term(models)
    classes = torch.tensor([0, 3, 1])
    torch.manual_seed(7)
    a = term.sample_negatives(classes, 20)
    torch.manual_seed(7)
    assert torch.equal(a, term.sample_negatives(classes, 20))


def reference_bank_loss(term, memory_s, memory_t, rows, vs, vt, z_s, z_t) -> float:
    """RepDistiller's ContrastMemory + ContrastLoss, in float64 loops: P = exp(v·m/τ)/Z, Pn = 1/N."""
    k, tau, total = rows.shape[1] - 1, term.temperature, 0.0
    for anchors, memory, z in ((vs, memory_t, z_s * N), (vt, memory_s, z_t * N)):
        side = 0.0
        for b in range(rows.shape[0]):
            p = [
                math.exp(sum(float(anchors[b, d]) * float(memory[rows[b, j], d]) for d in range(DIM)) / tau)
                / z
                for j in range(k + 1)
            ]
            side += math.log(p[0] / (p[0] + k / N))
            side += sum(math.log((k / N) / (p[j] + k / N)) for j in range(1, k + 1))
        total += -side / rows.shape[0]
    return total


def test_bank_loss_matches_repdistiller_formula_and_fixes_z(models, monkeypatch) -> None:
    term = make_term(models)
    fs, ft = features(4, 3)
    idx = torch.tensor([0, 9, 22, 31])
    negatives = torch.randint(0, N, (4, 8), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(term, "sample_negatives", lambda classes, k: negatives)
    memory_s, memory_t = term.memory_s.clone().double(), term.memory_t.clone().double()
    loss = term(inputs(fs, ft, LABELS[idx], idx))
    with torch.no_grad():
        vs, vt = term.embed_s(fs).double(), term.embed_t(ft).double()
    rows = torch.cat([idx.unsqueeze(1), negatives], 1)
    # Z is set from this first step: mean of exp(score/τ) over positive + negatives (× N in RepDistiller)
    z_s = (vs.unsqueeze(1) * memory_t[rows]).sum(-1).div(term.temperature).exp().mean()
    z_t = (vt.unsqueeze(1) * memory_s[rows]).sum(-1).div(term.temperature).exp().mean()
    assert term.z.tolist() == pytest.approx([float(z_s), float(z_t)], rel=1e-5)
    expected = reference_bank_loss(term, memory_s, memory_t, rows, vs, vt, float(z_s), float(z_t))
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    first = term.z.clone()
    term(inputs(*features(4, 5), LABELS[idx], idx))
    assert torch.equal(term.z, first)  # fixed after the first step


def test_gradients_reach_both_heads_and_the_student_only(models) -> None:
    term = make_term(models)
    fs, ft = features(4, 6)
    fs.requires_grad_()
    idx = torch.tensor([1, 2, 3, 4])
    term(inputs(fs, ft, LABELS[idx], idx)).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert term.embed_s.linear.weight.grad.abs().sum() > 0
    assert term.embed_t.linear.weight.grad.abs().sum() > 0
    assert not term.memory_s.requires_grad and not term.memory_t.requires_grad


def test_score_paths_agree() -> None:
    memory = F.normalize(torch.randn(50, 8), dim=1)
    rows = torch.randint(0, 50, (3, 7))
    anchors = F.normalize(torch.randn(3, 8), dim=1)
    full = ContrastiveRepresentation.scores(memory, rows, anchors)  # 50 ≤ 7·8: one matmul
    big = torch.cat([memory, torch.zeros(100, 8)])  # 150 > 56: gathers rows instead
    assert torch.allclose(full, ContrastiveRepresentation.scores(big, rows, anchors), atol=1e-6)
    manual = torch.stack([memory[rows[b]] @ anchors[b] for b in range(3)])
    assert torch.allclose(full, manual, atol=1e-6)


def test_bank_state_is_saved_and_restored(models) -> None:
    term = make_term(models)
    idx = torch.tensor([3, 4])
    term(inputs(*features(2, 7), LABELS[idx], idx))
    state = term.state_dict()
    assert {"memory_s", "memory_t", "z"} <= state.keys()
    assert "train_labels" not in state  # rebuilt from the dataset at setup
    fresh = make_term(models)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory_s, term.memory_s) and torch.equal(fresh.z, term.z)
    fs, ft = features(2, 8)
    torch.manual_seed(9)
    a = term(inputs(fs, ft, LABELS[idx], idx))
    torch.manual_seed(9)
    assert torch.equal(a, fresh(inputs(fs, ft, LABELS[idx], idx)))


def test_views_without_indices_cannot_use_the_bank(models) -> None:
    term = make_term(models)
    with pytest.raises(DatakdError, match=r"indices.*mix"):
        term(inputs(*features(2, 9), labels=None, indices=None, name="mix"))


# ----------------------------------------------------------------------------------------- queue


def test_queue_memory_is_bounded_fifo(models) -> None:
    small = make_term(models, memory="queue", queue_size=10)
    large = make_term(
        models, n=100_000, labels=torch.arange(100_000) % CLASSES, memory="queue", queue_size=10
    )
    size = lambda t: sum(b.numel() * b.element_size() for b in t.buffers() if b.is_floating_point())  # noqa: E731
    assert size(small) == size(large)  # independent of the dataset size
    written_s, written_labels = [], []
    for step in range(5):  # 5 batches of 4 = 20 entries through a queue of 10
        fs, ft = features(4, 10 + step)
        labels = torch.tensor([step % CLASSES] * 4)
        small(inputs(fs, ft, labels))
        with torch.no_grad():
            written_s.append(small.embed_s(fs))
        written_labels.append(labels)
        assert small.queue_s.shape == (10, DIM) and small.queue_labels.shape == (10,)
    newest = torch.cat(written_s)[-10:]
    newest_labels = torch.cat(written_labels)[-10:]
    order = (small.queue_ptr + torch.arange(10)) % 10  # oldest first
    assert torch.allclose(small.queue_s[order], newest, atol=1e-6)
    assert torch.equal(small.queue_labels[order], newest_labels)
    assert int(small.queue_ptr) == 20 % 10


def test_queue_keeps_the_newest_entries_of_a_large_batch(models) -> None:
    term = make_term(models, memory="queue", queue_size=3)
    fs, ft = features(5, 20)
    term(inputs(fs, ft, torch.arange(5) % CLASSES))
    with torch.no_grad():
        vt = term.embed_t(ft)
    order = (term.queue_ptr + torch.arange(3)) % 3
    assert torch.allclose(term.queue_t[order], vt[-3:], atol=1e-6)


def test_queue_loss_matches_loops_with_same_class_masking(models) -> None:
    term = make_term(models, memory="queue", queue_size=6)
    queue_labels = torch.tensor([0, 1, 2, 0, -1, 3])
    term.queue_labels.copy_(queue_labels)
    queue_s, queue_t = term.queue_s.clone().double(), term.queue_t.clone().double()
    fs, ft = features(2, 21)
    labels = torch.tensor([0, 2])
    loss = term(inputs(fs, ft, labels))
    with torch.no_grad():
        vs, vt = term.embed_s(fs).double(), term.embed_t(ft).double()
    tau, total = term.temperature, 0.0
    for side, (anchors, positives, queue) in enumerate(((vs, vt, queue_t), (vt, vs, queue_s))):
        kept = [[j for j in range(6) if int(queue_labels[j]) != int(labels[b])] for b in range(2)]
        e_all = [
            [math.exp(float(anchors[b] @ positives[b]) / tau)]
            + [math.exp(float(anchors[b] @ queue[j]) / tau) for j in kept[b]]
            for b in range(2)
        ]
        z = sum(sum(row) for row in e_all) / sum(len(row) for row in e_all)
        assert float(term.z[side]) == pytest.approx(z, rel=1e-5)
        value = 0.0
        for b in range(2):
            c = len(kept[b]) * z
            value += math.log(e_all[b][0] / (e_all[b][0] + c))
            value += sum(math.log(c / (e + c)) for e in e_all[b][1:])
        total += -value / 2
    assert loss.item() == pytest.approx(total, rel=1e-4)


def test_queue_needs_no_indices_but_other_class_needs_labels(models) -> None:
    term = make_term(models, memory="queue", queue_size=8)
    value = term(inputs(*features(3, 22), labels=torch.tensor([0, 1, 2]), indices=None, name="mix"))
    assert torch.isfinite(value)
    with pytest.raises(DatakdError, match="labels"):
        term(inputs(*features(3, 23), labels=None, name="mix"))
    anyq = make_term(models, memory="queue", queue_size=8, negatives="any")
    assert torch.isfinite(anyq(inputs(*features(3, 24), labels=None, name="mix")))
    assert (anyq.queue_labels == -1).all()  # unlabelled entries never count as a class


def test_queue_state_is_saved(models) -> None:
    term = make_term(models, memory="queue", queue_size=8)
    term(inputs(*features(3, 25), torch.tensor([0, 1, 2])))
    state = term.state_dict()
    assert {"queue_s", "queue_t", "queue_labels", "queue_ptr", "z"} <= state.keys()
    assert "memory_s" not in state


# ----------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory": "ring"}, "memory 'ring' is not one of bank, queue"),
        ({"memory": "queue", "positive": "relax"}, "relax"),
        ({"negatives": "same"}, "negatives"),
        ({"nce_k": 0}, "nce_k"),
        ({"temperature": 0.0}, "temperature"),
        ({"momentum": 1.0}, "momentum"),
        ({"student": ["stage2", "pre_logits"]}, "one student tap"),
    ],
)
def test_bad_options_fail_clearly(options: dict, message: str) -> None:
    with pytest.raises(DatakdError, match=message):
        build_terms({"crd": options})


def test_single_class_data_cannot_give_other_class_negatives(models) -> None:
    with pytest.raises(DatakdError, match="two classes"):
        make_term(models, labels=torch.zeros(N, dtype=torch.long))


# ----------------------------------------------------------------------------------------- DDP


def _memory_options(memory: str) -> dict:
    return {"memory": "queue", "queue_size": 12} if memory == "queue" else {}


def _ddp_worker(rank: int, port: int, memory: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        models = (create("resnet8", CLASSES, in_channels=1), create("resnet8", CLASSES, in_channels=1))
        term = make_term(models, **_memory_options(memory))
        term.load_state_dict(torch.load(out + ".init.pt"))  # the same heads and memory on both ranks
        idx = torch.tensor([rank * 4 + i for i in range(4)])  # each rank sees different images
        fs, ft = features(4, 100 + rank)
        term(inputs(fs, ft, LABELS[idx], idx))
        torch.save(
            {k: v for k, v in term.state_dict().items() if not k.startswith("embed")}, f"{out}.{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_memory_stays_identical_across_ranks(tmp_path, memory: str) -> None:
    """Two gloo processes with different images: both memories get all 8 embeddings, identically."""
    import socket

    import torch.multiprocessing as mp

    models = (create("resnet8", CLASSES, in_channels=1), create("resnet8", CLASSES, in_channels=1))
    init = make_term(models, **_memory_options(memory)).state_dict()
    out = str(tmp_path / "state")
    torch.save(init, out + ".init.pt")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, memory, out), nprocs=2)
    states = [torch.load(f"{out}.{rank}.pt") for rank in range(2)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    if memory == "bank":
        changed = (states[0]["memory_s"] != init["memory_s"]).any(dim=1)
        assert changed.nonzero().flatten().tolist() == list(range(8))
    else:
        assert int(states[0]["queue_ptr"]) == 8
        assert sorted(states[0]["queue_labels"][:8].tolist()) == sorted(LABELS[:8].tolist())
