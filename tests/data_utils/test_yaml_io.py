from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_utils.errors import UserError
from data_utils.task_def import HeadType, load_task_defs
from data_utils.yaml_io import load_yaml, parse_yaml

REPO = Path(__file__).resolve().parents[2]
RTE = "  task_type: classification\n  data_format: premise_and_one_hypothesis\n  n_class: 2\n"


def write(tmp_path: Path, text: str | bytes, name: str = "tasks.yml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as caught:
        load_yaml(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- duplicate keys ----------------------------------------------------------------------------------------


def test_a_task_defined_twice_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"rte:\n{RTE}mnli:\n{RTE}rte:\n{RTE}")
    assert error_of(path) == f"{path}:9: key 'rte': given twice (first on line 1)"
    with pytest.raises(UserError, match=rf"^{path}:9: key 'rte': given twice \(first on line 1\)$"):
        load_task_defs(path)


def test_a_key_given_twice_inside_a_task(tmp_path: Path) -> None:
    path = write(tmp_path, f"rte:\n{RTE}  dropout_p: 0.1\n  n_class: 3\n")
    assert error_of(path) == f"{path}:6: key 'n_class': given twice (first on line 4)"


def test_a_duplicate_in_a_flow_mapping_and_in_a_list_item(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "a: {x: 1, y: 2, x: 3}\n")) == (
        f"{tmp_path / 'tasks.yml'}:1: key 'x': given twice (first on line 1)"
    )
    path = write(tmp_path, "runs:\n  - lr: 1\n    lr: 2\n", "list.yml")
    assert error_of(path) == f"{path}:3: key 'lr': given twice (first on line 2)"


def test_a_merge_may_override_what_it_merges(tmp_path: Path) -> None:
    path = write(tmp_path, "base: &base {n: 1, m: 2}\nchild:\n  <<: *base\n  n: 5\n")
    assert load_yaml(path) == {"base": {"n": 1, "m": 2}, "child": {"n": 5, "m": 2}}


def test_integer_keys_stay_integers(tmp_path: Path) -> None:
    # quality grids key epochs by train size (``500: [--epochs, 6]``)
    assert load_yaml(write(tmp_path, "500: [--epochs, 6]\n")) == {500: ["--epochs", 6]}


# --- YAML 1.2 booleans -------------------------------------------------------------------------------------


def test_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    text = (
        "on: 1\noff: 2\nyes: 3\nno: 4\ny: 5\nn: 6\nflags: [true, false, True, FALSE, yes, No, ON, Off, y]\n"
    )
    assert load_yaml(write(tmp_path, text)) == {
        "on": 1,
        "off": 2,
        "yes": 3,
        "no": 4,
        "y": 5,
        "n": 6,
        "flags": [True, False, True, False, "yes", "No", "ON", "Off", "y"],
    }
    assert yaml.safe_load("on: 1") == {True: 1}  # the stock loader is left as it was


@pytest.mark.parametrize("name", ["on", "yes", "no", "off", "y", "n"])
def test_a_task_named_like_a_yaml11_boolean_keeps_its_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"{name}:\n{RTE}  enable_san: true\n")
    task_defs = load_task_defs(path)
    assert list(task_defs) == [name]
    assert task_defs[name].name == name and task_defs[name].head is HeadType.SAN


def test_yes_no_labels_are_label_names(tmp_path: Path) -> None:
    path = write(
        tmp_path, "boolq:\n  task_type: classification\n  data_format: premise_only\n  labels: [no, yes]\n"
    )
    assert load_task_defs(path)["boolq"].labels == ("no", "yes")


def test_task_names_that_are_not_text(tmp_path: Path) -> None:
    path = write(tmp_path, f"null:\n{RTE}")
    with pytest.raises(UserError, match=rf"^{path}: task name None is not text; quote it in the YAML$"):
        load_task_defs(path)
    path = write(tmp_path, f"1:\n{RTE}'1':\n{RTE}", "numbers.yml")
    with pytest.raises(UserError, match=rf"^{path}: task '1': defined twice$"):
        load_task_defs(path)


def test_every_shipped_yaml_reads_as_safe_load_reads_it() -> None:
    """The stricter loader changes nothing for the project's files (mt-dnn's published spelling included)."""
    shipped = sorted([*(REPO / "experiments").rglob("*.yml"), *(REPO / "tests").rglob("*.yml")])
    assert REPO / "experiments/glue/glue_task_def.yml" in shipped
    assert REPO / "tests/data_utils/fixtures/mtdnn_glue_task_def.yml" in shipped
    for path in shipped:
        assert load_yaml(path) == yaml.safe_load(path.read_text(encoding="utf-8")), path


# --- documents that are not YAML a person meant -------------------------------------------------------------


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert error_of(path) == f"{path}: invalid YAML: nested too deeply"
    with pytest.raises(UserError, match="nested too deeply"):
        load_task_defs(path)


def test_another_encoding_names_file_and_line(tmp_path: Path) -> None:
    text = f"rte:\n{RTE}  labels: [caf\u00e9, th\u00e9]\n"
    path = write(tmp_path, text.encode("latin-1"))
    message = error_of(path)
    assert message == f"{path}:5: not UTF-8 text (byte 0xe9 at column 15); save the file as UTF-8"
    with pytest.raises(UserError, match=r":5: not UTF-8 text"):
        load_task_defs(path)


def test_a_utf8_bom_is_fine(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path, b"\xef\xbb\xbfa: caf\xc3\xa9\n")) == {"a": "caf\u00e9"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: 1\nb: \x07\n",
            ":2: invalid YAML: unacceptable character #x0007: special characters are not allowed",
        ),
        ("a: [1, 2\n", ":2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        (
            "a: !!python/object/apply:os.system [echo]\n",
            ":1: invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        ("? [1, 2]\n: x\n", ":1: invalid YAML: found unhashable key"),
    ],
)
def test_syntax_errors_are_one_line_with_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}{expected}"


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"^{tmp_path / 'absent.yml'}: cannot read config: No such file"):
        load_yaml(tmp_path / "absent.yml", what="config")
    with pytest.raises(UserError, match=rf"^{tmp_path}: cannot read YAML: Is a directory$"):
        load_yaml(tmp_path)


def test_parse_yaml_names_its_source() -> None:
    with pytest.raises(UserError, match=r"^run\.yml:2: key 'lr': given twice \(first on line 1\)$"):
        parse_yaml("lr: 1\nlr: 2\n", "run.yml")


def test_a_bad_task_file_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "a: " + "{b: " * 50_000 + "}" * 50_000 + "\n")
    latin = write(tmp_path, "a: caf\u00e9\n".encode("latin-1"), "latin.yml")
    script = (
        "import sys; from data_utils.errors import exit_on_user_error; "
        "from data_utils.task_def import load_task_defs; exit_on_user_error(load_task_defs)(sys.argv[1])"
    )
    for bad, expected in (
        (path, f"error: {path}: invalid YAML: nested too deeply"),
        (latin, f"error: {latin}:1: not UTF-8 text (byte 0xe9 at column 7); save the file as UTF-8"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", script, str(bad)], capture_output=True, text=True, cwd=REPO, timeout=120
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [expected]
