"""Mixed precision (bf16 autocast, fp16 with a loss scale) and gradient checkpointing, with and without SMART."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from data_utils.errors import UserError
from module.adversarial import SmartConfig, SmartPerturbation
from module.losses import sym_kl
from mt_dnn.checkpoint_state import STATE_FILE
from mt_dnn.flags import parse_config
from mt_dnn.model import MTDNNModel
from mt_dnn.trainer import Trainer
from tests.mt_dnn.conftest import tiny_bert_config, tiny_task_defs
from tests.mt_dnn.test_trainer import config_for


def test_bf16_training_stays_finite_and_learns(tiny_run: dict, tmp_path: Path) -> None:
    config = config_for(
        tiny_run, tmp_path, epochs=12, learning_rate=2e-3, train_datasets=["single"], bf16=True
    )
    results = Trainer(config).train()
    assert results["nonfinite_steps_skipped"] == 0
    assert results["final_eval"]["single_dev"]["acc"] >= 80.0, results["final_eval"]


def test_fp16_smart_training_runs_with_a_loss_scale(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, epochs=1, fp16=True, adv_train=True))
    assert trainer.scaler.is_enabled()
    results = trainer.train()
    assert results["finished"] and results["nonfinite_steps_skipped"] == 0
    state = trainer.model.state_dict()
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())
    saved = torch.load(tmp_path / "last" / STATE_FILE, weights_only=True)
    assert saved["grad_scaler"]["scale"] > 0


def test_bf16_and_fp16_exclude_each_other() -> None:
    flags = ["--task_def", "t", "--data_dir", "d", "--init_checkpoint", "e", "--train_datasets", "a"]
    with pytest.raises(UserError, match="--bf16 and --fp16"):
        parse_config([*flags, "--bf16", "--fp16"])


def test_the_inner_gradient_is_scaled_so_it_does_not_underflow_in_fp16() -> None:
    """A tiny divergence: its gradient underflows to 0 in fp16 unless scaled first, and then delta stays put."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(8, 16)

    def tiny(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1e-10 * sym_kl(outputs, target)

    config = SmartConfig(noise_var=1e-2, epsilon=1e-1, step_size=1.0)
    deltas = {}
    for scale in (1.0, 2.0**24):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.float16):
            result = SmartPerturbation(model[0], config)(lambda: model(x), tiny, inner_loss_scale=scale)
        deltas[scale] = result.delta
    torch.manual_seed(1)
    noise = torch.randn(8, 16) * 1e-2  # the initial noise, left unmoved by a zero step
    assert torch.equal(deltas[1.0], noise.clamp(-0.1, 0.1))
    assert (deltas[2.0**24] - noise).abs().max() > 0.05  # the scaled gradient moved it by ~step size


def _no_dropout_model() -> MTDNNModel:
    from transformers import BertModel

    torch.manual_seed(0)
    encoder = BertModel(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return MTDNNModel(
        encoder,
        {
            name: task.__class__(**{**task.__dict__, "dropout_p": 0.0})
            for name, task in tiny_task_defs().items()
        },
    ).train()


def test_gradient_checkpointing_gives_the_same_smart_gradients() -> None:
    ids = torch.randint(5, 30, (4, 11))
    attention = torch.ones_like(ids)
    attention[0, 8:] = 0
    gradients = []
    for checkpointing in (False, True):
        model = _no_dropout_model()
        if checkpointing:
            model.enable_gradient_checkpointing()
        calls = {"n": 0}
        attention_forward = model.encoder.encoder.layer[0].attention.self.forward

        def counted(
            *args: object, _forward: Any = attention_forward, _calls: dict = calls, **kwargs: object
        ) -> Any:
            _calls["n"] += 1
            return _forward(*args, **kwargs)

        model.encoder.encoder.layer[0].attention.self.forward = counted
        smart = SmartPerturbation(model.perturbation_target(), SmartConfig(epsilon=1e-3, noise_var=1e-3, k=2))
        torch.manual_seed(3)
        result = smart(lambda model=model: model("pair", ids, attention), sym_kl, attention)
        (
            torch.nn.functional.cross_entropy(result.outputs, torch.tensor([0, 1, 2, 0])) + result.loss
        ).backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
        # 4 forwards (clean, 2 inner, final); checkpointing recomputes the 2 branches of the one full backward
        # and the 2 inner passes' delta-only backwards.
        assert calls["n"] == (8 if checkpointing else 4)
    assert gradients[0].keys() == gradients[1].keys()
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------ does the perturbation survive autocast?


def test_the_resolution_warning_names_the_numbers_and_only_fires_below_the_resolution() -> None:
    from module.adversarial.precision import resolution_warning

    message = resolution_warning("smart", 2e-5, torch.bfloat16)
    assert message is not None and "2.0e-05" in message and "bfloat16" in message and "7.8e-03" in message
    assert "below" in message and "--adv_radius relative" in message
    assert resolution_warning("smart", 2e-5, torch.float16) is not None  # fp16's resolution is 9.8e-04
    partly = resolution_warning("fgsm", 0.01, torch.bfloat16)  # 1.3 resolutions: partly lost
    assert partly is not None and "within 2x of" in partly and "partly rounded away" in partly
    assert "at least 0.016" in partly  # 2 x 7.8e-3, rounded up: following the hint clears the warning
    assert resolution_warning("fgsm", 0.016, torch.bfloat16) is None
    assert resolution_warning("fgm", 0.02, torch.bfloat16) is None  # the relative defaults stay quiet
    assert resolution_warning("fgsm", 0.01, torch.float16) is None  # 10 resolutions of fp16
    assert resolution_warning("rdrop", 0.0, torch.bfloat16) is None  # no perturbation: nothing to lose


@pytest.mark.parametrize(
    ("options", "warned"),
    [
        ({"adv_train": True}, True),  # the paper's eps = 1e-5 under bf16
        ({"adv_method": "fgm", "adv_epsilon": 0.1}, False),  # a relative 10% ball survives bf16
    ],
)
def test_a_bf16_run_warns_once_when_its_perturbation_is_rounded_away(
    tiny_run: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture, options: dict[str, Any], warned: bool
) -> None:
    config = config_for(tiny_run, tmp_path, epochs=1, bf16=True, train_datasets=["single"], **options)
    with caplog.at_level("WARNING", logger="mt_dnn.trainer"):
        Trainer(config).train(until_step=3)
    messages = [record.getMessage() for record in caplog.records if "resolution" in record.getMessage()]
    assert len(messages) == (1 if warned else 0), messages
