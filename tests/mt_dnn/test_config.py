"""The run config: nested sections, the flat mt-dnn names as aliases, and what the flat config meant."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import train
from data_utils.sampler import SamplingConfig, SamplingStrategyName
from module.adversarial import AdversarialConfig, AdversarialMethodName, MethodSpec, PNorm
from module.bregman import BregmanConfig, TeacherMode
from mt_dnn.config import TrainConfig, validate
from mt_dnn.flags import build_parser, parse_config
from tests.module.adversarial.test_registry import SPEC as SHIFT_SPEC
from tests.module.adversarial.test_registry import registered  # noqa: F401 - a fixture

FIXTURES = Path(__file__).parent / "fixtures"
MAIN = json.loads((FIXTURES / "main_flat_configs.json").read_text())
REQUIRED = ["--task_def", "t.yml", "--data_dir", "d", "--init_checkpoint", "m", "--train_datasets", "t"]

# Every option build_parser offered when the config was one flat dataclass (main at 304044c).
FLAT_FLAGS = """
--adam_eps --adv_alpha --adv_dropout_replay --adv_epsilon --adv_init_mag --adv_k --adv_method --adv_noise_type
--adv_noise_var --adv_norm_level --adv_outer_steps --adv_p_norm --adv_radius --adv_replays --adv_step_size
--adv_train --batch_size --batch_size_eval --best_metric --bf16 --bregman_beta --bregman_beta_warmup
--bregman_mu --bregman_steps --bregman_teacher_mode --bregman_warmup --bucket_window --compile --config
--data_dir --device --dropout_p --early_stopping_patience --epochs --eval_every_steps --fp16
--grad_accumulation_step --grad_clipping --gradient_checkpointing --help --init_checkpoint --learning_rate
--local_rank --log_every_steps --max_nonfinite_steps --max_steps --mix_opt --no-adv_dropout_replay
--no-adv_train --no-bf16 --no-compile --no-fp16 --no-gradient_checkpointing --no-overwrite_output_dir
--no-progress --no-resume --no-tensorboard --no-use_encoder_pooler --num_workers --optimizer --output_dir
--overwrite_output_dir --progress --ratio --resume --sampling --save_every_steps --scheduler_type --seed
--task_def --temperature --tensorboard --test_datasets --train_datasets --use_encoder_pooler --warmup
--weight_decay -h
""".split()  # noqa: SIM905 - words read better as words


def options() -> set[str]:
    return {option for action in build_parser()._actions for option in action.option_strings}


def test_every_flat_flag_is_still_offered() -> None:
    assert set(FLAT_FLAGS) <= options()


def test_every_section_field_has_a_flag() -> None:
    offered = options()
    for section, owner in (("bregman", BregmanConfig), ("sampling", SamplingConfig)):
        for name in owner.__dataclass_fields__:
            assert f"--{section}.{name}" in offered
    for name in ("method", "epsilon", "init_mag", "replays", "outer_steps", "noise_type"):
        assert f"--adversarial.{name}" in offered


def test_a_registered_methods_parameter_gets_its_flags(registered: MethodSpec) -> None:  # noqa: F811
    assert registered is SHIFT_SPEC
    assert {"--adversarial.shift", "--adv_shift"} <= options()
    config = parse_config([*REQUIRED, "--adv_method", "shift", "--adv_shift", "0.3"])
    assert config.adversarial == AdversarialConfig("shift", {"shift": 0.3})


def from_flat(flat: dict[str, Any]) -> TrainConfig:
    """What a flat config's keys meant, spelt out by hand (independent of config.py's alias table)."""
    flat = dict(flat)
    method = flat.pop("adv_method")
    flat.pop("adv_train")
    parameters = {key[4:]: flat.pop(key) for key in list(flat) if key.startswith("adv_")}
    bregman = BregmanConfig(
        mu=flat.pop("bregman_mu"),
        beta=flat.pop("bregman_beta"),
        beta_warmup=flat.pop("bregman_beta_warmup"),
        warmup_fraction=flat.pop("bregman_warmup"),
        update_every=flat.pop("bregman_steps"),
        teacher_mode=flat.pop("bregman_teacher_mode"),
    )
    sampling = SamplingConfig(
        strategy=flat.pop("sampling"),
        ratio=flat.pop("ratio"),
        mix_opt=flat.pop("mix_opt"),
        temperature=flat.pop("temperature"),
        bucket_window=flat.pop("bucket_window"),
    )
    given = {key: value for key, value in parameters.items() if value is not None}
    adversarial = AdversarialConfig(method, given)
    return TrainConfig(**flat, adversarial=adversarial, bregman=bregman, sampling=sampling)


@pytest.mark.parametrize("name", sorted(MAIN["flag_lists"]))
def test_the_flat_flags_of_every_grid_mean_what_they_meant(name: str) -> None:
    item = MAIN["flag_lists"][name]
    config = parse_config([*MAIN["placeholder_flags"], *item["flags"]])
    assert config == from_flat({**MAIN["defaults"], **item["changed"]})
    assert TrainConfig.from_dict(config.to_dict()) == config  # the recorded form reads back


@pytest.mark.parametrize("path", sorted(MAIN["run_configs"]))
def test_every_shipped_run_config_means_what_it_meant(path: str) -> None:
    item = MAIN["run_configs"][path]
    repo = Path(__file__).resolve().parents[2]
    config = parse_config(["--config", str(repo / path), *item["extra_flags"]])
    assert config == from_flat({**MAIN["defaults"], **item["changed"]})


NESTED_YAML = """
adversarial: {method: smart, epsilon: 1.0e-4, p_norm: l2, dropout_replay: true, k: 2}
bregman: {mu: 0.5, update_every: 2, warmup_fraction: 0.2, teacher_mode: train}
sampling: {strategy: temperature, temperature: 2, bucket_window: 0}
"""
FLAT_YAML = """
adv_train: true
adv_epsilon: 1.0e-4
adv_p_norm: l2
adv_dropout_replay: true
adv_k: 2
bregman_mu: 0.5
bregman_steps: 2
bregman_warmup: 0.2
bregman_teacher_mode: train
sampling: temperature
temperature: 2
bucket_window: 0
"""
DOTTED_FLAGS = [
    *("--adversarial.method", "smart", "--adversarial.epsilon", "1e-4", "--adversarial.p_norm", "l2"),
    *(
        "--adversarial.dropout_replay",
        "--adversarial.k",
        "2",
        "--bregman.mu",
        "0.5",
        "--bregman.update_every",
    ),
    *("2", "--bregman.warmup_fraction", "0.2", "--bregman.teacher_mode", "train", "--sampling.strategy"),
    *("temperature", "--sampling.temperature", "2", "--sampling.bucket_window", "0"),
]
FLAT_FLAGS_GIVEN = [
    *("--adv_train", "--adv_epsilon", "1e-4", "--adv_p_norm", "l2", "--adv_dropout_replay", "--adv_k", "2"),
    *("--bregman_mu", "0.5", "--bregman_steps", "2", "--bregman_warmup", "0.2", "--bregman_teacher_mode"),
    *("train", "--sampling", "temperature", "--temperature", "2", "--bucket_window", "0"),
]


def test_flat_nested_dotted_and_typed_forms_are_one_config(tmp_path: Path) -> None:
    expected = TrainConfig(
        task_def="t.yml",
        data_dir="d",
        init_checkpoint="m",
        train_datasets=["t"],
        adversarial=AdversarialConfig(
            AdversarialMethodName.SMART, {"epsilon": 1e-4, "p_norm": PNorm.L2, "dropout_replay": True, "k": 2}
        ),
        bregman=BregmanConfig(mu=0.5, update_every=2, warmup_fraction=0.2, teacher_mode=TeacherMode.TRAIN),
        sampling=SamplingConfig(strategy=SamplingStrategyName.TEMPERATURE, temperature=2.0, bucket_window=0),
    )
    forms = {"nested.yml": NESTED_YAML, "flat.yml": FLAT_YAML}
    for name, text in forms.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert parse_config([*REQUIRED, "--config", str(tmp_path / name)]) == expected, name
    assert parse_config([*REQUIRED, *DOTTED_FLAGS]) == expected
    assert parse_config([*REQUIRED, *FLAT_FLAGS_GIVEN]) == expected
    flat = {"task_def": "t.yml", "data_dir": "d", "init_checkpoint": "m", "train_datasets": ["t"]}
    assert TrainConfig.from_dict({**flat, **expected.to_dict()}) == expected


def test_precedence_defaults_then_yaml_then_flags_in_either_spelling(tmp_path: Path) -> None:
    path = tmp_path / "run.yml"
    path.write_text(NESTED_YAML, encoding="utf-8")
    config = parse_config([*REQUIRED, "--config", str(path), "--adv_epsilon", "1e-3", "--bregman.mu", "2"])
    assert config.adversarial.parameters["epsilon"] == 1e-3 and config.adversarial.parameters["k"] == 2
    assert config.bregman.mu == 2.0 and config.bregman.update_every == 2
    assert config.bregman.beta == BregmanConfig().beta  # not in the YAML: the default
    # --adv_train does not replace a method the YAML picked; SMART's Bregman mu applies only to SMART.
    path.write_text("adversarial: {method: freelb}\n", encoding="utf-8")
    config = parse_config([*REQUIRED, "--config", str(path), "--adv_train"])
    assert config.adversarial.method is AdversarialMethodName.FREELB and config.bregman.mu == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "adversarial:\n  method: smart\n  epsilom: 1.0e-4\n",
            "section 'adversarial': key 'epsilom': unknown (did you mean 'epsilon'?)",
        ),
        (
            "bregman:\n  update_evry: 2\n",
            "section 'bregman': key 'update_evry': unknown (did you mean 'update_every'?)",
        ),
        (
            "sampling: {strategy: temperature, temprature: 2}\n",
            "section 'sampling': key 'temprature': unknown",
        ),
        ("bregman_step: 2\n", "key 'bregman_step': unknown training option (did you mean 'bregman_steps'?)"),
        (
            "adv_epsilon: 1.0e-4\nadversarial: {epsilon: 1.0e-3}\n",
            "key 'adv_epsilon' already sets adversarial.epsilon",
        ),
        ("bregman: {mu: lots}\n", "section 'bregman': key 'mu': expected float, got 'lots'"),
    ],
)
def test_a_mistake_in_a_section_is_one_error_line_naming_file_section_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "run.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines


def test_a_section_value_the_component_refuses_names_the_key_in_both_spellings() -> None:
    with pytest.raises(SystemExit):
        train.main([*REQUIRED, "--bregman.update_every", "0"])
    for flags, message in (
        (["--bregman_warmup", "2"], "--bregman.warmup_fraction (--bregman_warmup): Bregman warmup_fraction"),
        (["--temperature", "0"], "--sampling.temperature (--temperature): temperature must be"),
        (["--adv_method", "pgd", "--adv_epsilon", "nan"], "--adversarial.epsilon (--adv_epsilon): "),
    ):
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_config([*REQUIRED, *flags])


def test_validate_checks_without_changing_the_config() -> None:
    config = parse_config([*REQUIRED, "--mix_opt", "1", "--ratio", "0.5", "--adv_train"])
    # mt-dnn's --mix_opt / --ratio pick the mix_opt strategy when the section is built, not in validate().
    assert config.sampling.strategy is SamplingStrategyName.MIX_OPT
    assert SamplingConfig(ratio=0.5).strategy is SamplingStrategyName.MIX_OPT
    before = copy.deepcopy(config)
    validate(config)
    assert config == before
    bad = TrainConfig(task_def="t", data_dir="d", init_checkpoint="m", train_datasets=["t"], warmup=1.5)
    bad_before = copy.deepcopy(bad)
    with pytest.raises(Exception, match=r"--warmup must be in \[0, 1\)"):
        validate(bad)
    assert bad == bad_before


def test_help_is_grouped_by_section() -> None:
    text = build_parser().format_help()
    for title in ("adversarial (YAML section", "bregman (YAML section", "sampling (YAML section"):
        assert title in text
    bregman = text.index("bregman (YAML section")
    assert bregman < text.index("--bregman.update_every", bregman) < text.index("sampling (YAML section")
    assert "--bregman.update_every UPDATE_EVERY, --bregman_steps UPDATE_EVERY" in " ".join(text.split())
