"""The S2S2 trainer and its consistency handlers against manual losses and MONAI's baseline."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet

from s2s2_monai.training.handlers import ConsistencyHandler, loss_terms
from s2s2_monai.training.trainer import S2S2Trainer

ENC, DEC = "down_4", "upcat_1"


def _net():
    torch.manual_seed(0)
    return BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4), norm="batch")


def _batches(n=2, stack=True):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        b = {
            "image": torch.randn(2, 1, 32, 32, generator=g),
            "label": torch.randint(0, 3, (2, 1, 32, 32), generator=g).float(),
        }
        x1 = torch.randn(2, 1, 32, 32, generator=g)
        if stack:
            b["image_stack"] = x1
        out.append(b)
    return out


def _loss():
    return DiceCELoss(to_onehot_y=True, softmax=True)


def _trainer(net, data, handlers=(), cls=S2S2Trainer, lr=0.1, momentum=0.0, **kw):
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    return cls(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=_loss(),
        train_handlers=list(handlers),
        decollate=False,
        **kw,
    )


def _manual_loss(net, batch, a_enc, a_dec):
    """Lseg(x0) + Lseg(x1) + a_enc D(enc) + a_dec D(dec), features read with plain forward hooks."""
    feats = {ENC: [], DEC: []}
    hooks = [getattr(net, m).register_forward_hook(lambda mod, i, o, m=m: feats[m].append(o)) for m in feats]
    loss_fn = _loss()
    y = batch["label"]
    p0, p1 = net(batch["image"]), net(batch["image_stack"])
    for h in hooks:
        h.remove()

    def d(a, b):  # 1 - cos over channels, written out
        cos = (a * b).sum(1) / (a.norm(dim=1).clamp_min(1e-8) * b.norm(dim=1).clamp_min(1e-8))
        return (1 - cos).mean()

    return loss_fn(p0, y) + loss_fn(p1, y) + a_enc * d(*feats[ENC]) + a_dec * d(*feats[DEC])


def _grads(net):
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def test_handlers_give_exactly_the_manual_loss_and_gradient():
    net = _net()
    ref = copy.deepcopy(net)
    batch = _batches(1)[0]
    handlers = [ConsistencyHandler(ENC, alpha=0.7, name="enc"), ConsistencyHandler(DEC, alpha=0.3, name="dec")]
    trainer = _trainer(net, [batch], handlers)
    seen = {}
    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED,
        lambda e: seen.update(grads=_grads(e.network), loss=e.state.output["loss"].item()),
    )
    trainer.run()

    manual = _manual_loss(ref, batch, 0.7, 0.3)
    manual.backward()
    assert seen["loss"] == pytest.approx(manual.item(), rel=1e-6)
    for name, g in _grads(ref).items():
        assert torch.allclose(seen["grads"][name], g, atol=1e-6, rtol=1e-5), name
    terms = loss_terms(trainer.state.output)
    assert set(terms) == {"loss", "loss_seg", "loss_seg_stack", "loss_enc", "loss_dec"}
    assert terms["loss"] == pytest.approx(
        terms["loss_seg"] + terms["loss_seg_stack"] + 0.7 * terms["loss_enc"] + 0.3 * terms["loss_dec"], rel=1e-5
    )


def test_handlers_change_the_gradient_only_by_the_consistency_terms():
    batch = _batches(1)[0]
    got = {}
    for key, handlers in (
        ("plain", []),
        ("s2s2", [ConsistencyHandler(ENC, 1.0, "enc"), ConsistencyHandler(DEC, 1.0, "dec")]),
    ):
        trainer = _trainer(_net(), [batch], handlers)
        trainer.add_event_handler(
            IterationEvents.BACKWARD_COMPLETED, lambda e, k=key: got.__setitem__(k, _grads(e.network))
        )
        trainer.run()
    # gradient of the consistency terms alone, by hand
    net = _net()
    feats = {ENC: [], DEC: []}
    for m in feats:
        getattr(net, m).register_forward_hook(lambda mod, i, o, m=m: feats[m].append(o))
    net(batch["image"]), net(batch["image_stack"])
    terms = sum((1 - torch.nn.functional.cosine_similarity(*feats[m], dim=1)).mean() for m in feats)
    terms.backward()
    for name, p in net.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(got["s2s2"][name] - got["plain"][name], g, atol=1e-5, rtol=1e-4), name


def test_baseline_is_monai_supervised_trainer_bit_for_bit():
    data = _batches(3, stack=False)
    nets = {}
    for cls in (SupervisedTrainer, S2S2Trainer):
        net = _net()
        kw = {}
        handlers = [ConsistencyHandler(ENC, 1.0, "enc")] if cls is S2S2Trainer else []  # no stack: handlers idle
        _trainer(net, data, handlers, cls=cls, momentum=0.9, **kw).run()
        nets[cls.__name__] = net
    for (n, a), b in zip(nets["SupervisedTrainer"].state_dict().items(), nets["S2S2Trainer"].state_dict().values()):
        assert torch.equal(a, b), n


def test_s2s2_step_differs_from_baseline_only_through_added_terms():
    """One SGD step (no momentum) from the same seed: w_s2s2 - w_base = -lr * grad(Lseg(x1) + D_enc + D_dec)."""
    batch = _batches(1)[0]
    lr = 0.1
    base, s2s2 = _net(), _net()
    _trainer(base, [{k: v for k, v in batch.items() if k != "image_stack"}], lr=lr).run()
    _trainer(s2s2, [batch], [ConsistencyHandler(ENC, 1.0, "enc"), ConsistencyHandler(DEC, 1.0, "dec")], lr=lr).run()
    ref = _net()
    (_manual_loss(ref, batch, 1.0, 1.0) - _loss()(ref(batch["image"]), batch["label"])).backward()
    for (n, p_base), p_s2s2, p_ref in zip(base.named_parameters(), s2s2.parameters(), ref.parameters()):
        g = p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_ref)
        assert torch.allclose(p_s2s2 - p_base, -lr * g, atol=1e-6, rtol=1e-4), n


def test_two_forward_passes_and_standard_event_order():
    net = _net()
    calls, order = [], []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].data_ptr()))
    trainer = _trainer(net, _batches(1), [ConsistencyHandler(ENC, 1.0, "enc")])
    for ev in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(ev, lambda e, ev=ev: order.append((ev, sorted(map(str, e.state.output)))))
    trainer.run()
    assert len(calls) == 2 and calls[0] != calls[1]  # x0 then x1, separate passes
    assert [ev for ev, _ in order] == [
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ]
    assert "pred_stack" in order[0][1]  # both passes done before FORWARD_COMPLETED
    assert "loss_enc" in order[2][1]  # term added at LOSS_COMPLETED, before backward


def test_alpha_zero_logs_without_training_and_use_stack_false_is_baseline():
    batch = _batches(1)[0]
    got = {}
    for key, kw, handlers in (
        ("plain2", {}, []),
        ("alpha0", {}, [ConsistencyHandler(ENC, 0.0, "enc")]),
        ("nostack", {"use_stack": False}, [ConsistencyHandler(ENC, 1.0, "enc")]),
    ):
        t = _trainer(_net(), [batch], handlers, **kw)
        t.run()
        got[key] = loss_terms(t.state.output)
    assert got["alpha0"]["loss"] == pytest.approx(got["plain2"]["loss"], rel=1e-7)
    assert got["alpha0"]["loss_enc"] > 0
    assert set(got["nostack"]) == {"loss", "loss_seg"}


def test_tap_firing_more_than_twice_is_an_error():
    net = _net()
    # a module used at every level would fire many times per pass; emulate with a double forward in the inferer
    from monai.inferers import Inferer

    class Twice(Inferer):
        def __call__(self, x, network, *a, **k):
            network(x)
            return network(x)

    t = _trainer(net, _batches(1), [ConsistencyHandler(ENC, 1.0, "enc")], inferer=Twice())
    with pytest.raises(RuntimeError, match="fired 4 times"):
        t.run()


def test_loss_terms_on_decollated_output_and_none():
    out = [
        {
            "loss": torch.tensor(1.5),
            "loss_enc": torch.tensor(0.25),
            "pred": torch.zeros(3, 4, 4),
            "image": torch.zeros(1),
        }
    ]
    assert loss_terms(out) == {"loss": 1.5, "loss_enc": 0.25}
    assert loss_terms(None) is None and loss_terms([]) is None
