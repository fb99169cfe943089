"""vitlab.train.tasks.clip_loss: CLIP's symmetric InfoNCE against a hand computation, open_clip's ClipLoss, and 2 gloo
processes (gathered loss and gradients equal the one-process loss on the whole batch, with the DDP factors)."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from vitlab.train.tasks.clip_loss import ClipLoss, gather_features


def _normalised(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def _hand_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """½ (mean_i -log softmax_j(s <I_i, T_j>)[i] + mean_j -log softmax_i(s <T_j, I_i>)[j]), written out in loops."""
    n = image.shape[0]
    sim = [[scale * float(sum(image[i, k] * text[j, k] for k in range(image.shape[1]))) for j in range(n)]
           for i in range(n)]
    image_to_text = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    text_to_image = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return (image_to_text + text_to_image) / 2


def test_known_value_on_orthonormal_pairs():
    """Matched pairs on orthonormal axes: every row's logits are (s, 0, 0), so loss = log(1 + 2 e^{-s})."""
    features = torch.eye(3, dtype=torch.float64)  # (3, 3)
    scale = 2.5
    loss = ClipLoss()(features, features, torch.tensor(scale, dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-scale)), rel=1e-12)


def test_equals_hand_computation():
    image, text = _normalised(5, 4), _normalised(5, 4)
    scale = 7.0
    loss = ClipLoss(cache_labels=True)(image, text, torch.tensor(scale, dtype=torch.float64))
    assert loss.item() == pytest.approx(_hand_loss(image, text, scale), rel=1e-10)
    out = ClipLoss()(image, text, scale, output_dict=True)
    assert set(out) == {"contrastive_loss"} and out["contrastive_loss"].item() == pytest.approx(loss.item())


def test_equals_open_clip_loss_and_gradients():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    image = _normalised(16, 8).requires_grad_()
    text = _normalised(16, 8).requires_grad_()
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    ours = ClipLoss()(image, text, logit_scale.exp())
    grads = torch.autograd.grad(ours, (image, text, logit_scale))
    theirs = open_clip_loss.ClipLoss()(image, text, logit_scale.exp())
    their_grads = torch.autograd.grad(theirs, (image, text, logit_scale))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for mine, ref in zip(grads, their_grads):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)


# ---- two gloo processes, each with half of the batch ------------------------------------------------------------
WORLD, BATCH, RAW, DIM, SCALE = 2, 6, 5, 4, 10.0  # BATCH is the global batch
MODES = [(False, False), (False, True), (True, False), (True, True)]  # (local_loss, gather_with_grad)


class _Towers(nn.Module):
    """Image and text projections, L2-normalised: the smallest model whose parameters DDP averages."""

    def __init__(self):
        super().__init__()
        self.image, self.text = nn.Linear(RAW, DIM), nn.Linear(RAW, DIM)

    def forward(self, x_image, x_text):
        return F.normalize(self.image(x_image), dim=-1), F.normalize(self.text(x_text), dim=-1)  # (B, DIM) each


def _inputs():
    generator = torch.Generator().manual_seed(1)
    towers = _Towers().double()
    with torch.no_grad():
        for p in towers.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    x_image = torch.randn(BATCH, RAW, generator=generator, dtype=torch.float64)
    x_text = torch.randn(BATCH, RAW, generator=generator, dtype=torch.float64)
    return towers, x_image, x_text


def _loss_and_grads(model, x_image, x_text, loss_fn):
    image, text = model(x_image, x_text)
    image.retain_grad()
    text.retain_grad()
    loss = loss_fn(image, text, SCALE)
    loss.backward()
    unwrapped = getattr(model, "module", model)  # DDP's parameter names carry "module."
    params = {name: p.grad.clone() for name, p in unwrapped.named_parameters()}
    return {"loss": loss.item(), "image_grad": image.grad.clone(), "text_grad": text.grad.clone(), "params": params}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import datetime
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(60, exit=True, file=sys.stderr)  # a hang prints where, then fails the run
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=45))
    try:
        towers, x_image, x_text = _inputs()
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}
        for local_loss, gather_with_grad in MODES:
            ddp = nn.parallel.DistributedDataParallel(_Towers().double())
            ddp.module.load_state_dict(towers.state_dict())
            results[(local_loss, gather_with_grad)] = _loss_and_grads(
                ddp, x_image[local], x_text[local], ClipLoss(local_loss, gather_with_grad))
        gathered = gather_features(x_image[local], x_text[local])
        results["gather"] = [t.clone() for t in gathered]
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clip_dist")
    import time

    context = mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the two gloo workers did not finish within 120 s")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def _one_process():
    towers, x_image, x_text = _inputs()
    return _loss_and_grads(towers, x_image, x_text, ClipLoss())


def test_gather_concatenates_in_rank_order(two_ranks):
    _, x_image, x_text = _inputs()
    for r in range(WORLD):
        torch.testing.assert_close(two_ranks[r]["gather"][0], x_image, rtol=0, atol=0)
        torch.testing.assert_close(two_ranks[r]["gather"][1], x_text, rtol=0, atol=0)


@pytest.mark.parametrize("gather_with_grad", [False, True])
def test_two_ranks_global_loss_equals_one_process(two_ranks, gather_with_grad):
    """local_loss=False: every rank's loss is the one-process loss on the whole batch. Rank r's gradient w.r.t. its
    own features is slice r of the one-process gradient times 1 (detached gather: the other slices are constants)
    or times W (gather_with_grad: the all-gather's backward sums the W ranks' identical losses); DDP then averages
    the parameter gradients, giving 1/W resp. 1 times the one-process parameter gradient."""
    ref = _one_process()
    factor = WORLD if gather_with_grad else 1
    for r, result in enumerate(two_ranks):
        got = result[(False, gather_with_grad)]
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-12)
        local = slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD)
        torch.testing.assert_close(got["image_grad"], factor * ref["image_grad"][local], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["text_grad"], factor * ref["text_grad"][local], rtol=1e-10, atol=1e-12)
        for name, grad in got["params"].items():
            torch.testing.assert_close(grad, factor / WORLD * ref["params"][name], rtol=1e-10, atol=1e-12)


def test_two_ranks_local_loss(two_ranks):
    """local_loss=True: rank r's loss covers its own rows (labels offset by r·B); the mean over ranks is the global
    loss. With gather_with_grad the summed gradients make DDP's average the one-process parameter gradient."""
    ref = _one_process()
    for gather_with_grad in (False, True):
        losses = [result[(True, gather_with_grad)]["loss"] for result in two_ranks]
        assert sum(losses) / WORLD == pytest.approx(ref["loss"], rel=1e-12)
        assert losses[0] != pytest.approx(losses[1])  # the ranks' rows differ, so must their local losses
    for result in two_ranks:
        for name, grad in result[(True, True)]["params"].items():
            torch.testing.assert_close(grad, ref["params"][name], rtol=1e-10, atol=1e-12)
