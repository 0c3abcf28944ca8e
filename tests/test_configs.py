"""The configs: the list in ``config_list.py`` is the folder's, and every config, a variant with a
``base`` included, runs with one ``--config`` and gets exactly its base's options plus its own."""

from __future__ import annotations

import sys

import pytest
import yaml

import cli
from config_list import ALL, CONFIGS, TINY_EQUIVARIANT, TINY_HAMILTONIAN
from utils.config import config_chain, load_config, merge


def test_the_list_is_the_folder():
    assert sorted(ALL) == sorted(p.name for p in CONFIGS.glob("*.yaml")), "update tests/config_list.py"
    assert len(set(ALL)) == len(ALL)


def parsed(config: str, *extra: str, capsys) -> dict:
    """The config the CLI builds from one ``--config`` (``--print_config``), as a dict."""
    sys_argv, sys.argv = sys.argv, ["cli.py"]
    try:
        with pytest.raises(SystemExit):
            cli.main(["fit", "--config", str(CONFIGS / config), *extra, "--print_config"])
    finally:
        sys.argv = sys_argv
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", [c for c in ALL if "base" in yaml.safe_load((CONFIGS / c).read_text())])
def test_a_variant_is_its_base_plus_its_differences(config, capsys):
    chain = config_chain(CONFIGS / config)
    assert len(chain) >= 2 and all("base" not in data for _, data in chain)
    own = chain[-1][1]
    assert own, f"{config} states nothing of its own"
    base = load_config(chain[-2][0])
    merged = load_config(CONFIGS / config)
    assert merged == merge(base, own)
    # the CLI sees the same options as load_config: every option the variant states, and the base's others
    printed = parsed(config, capsys=capsys)
    for section in ("trainer", "model", "data"):
        want = {k: v for k, v in merged.get(section, {}).items() if k != "callbacks"}
        assert_states(printed[section], want, (config, section))


def assert_states(got, want, where: tuple) -> None:
    """``got`` (the CLI's full config, every default filled in) states every option of ``want``."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key, value in want.items():
            assert key in got, (*where, key)
            assert_states(got[key], value, (*where, key))
    else:
        assert got == want, where


@pytest.mark.parametrize("tiny,config", [(TINY_EQUIVARIANT, "mnist_equivariant_cpu.yaml"), (TINY_HAMILTONIAN, "sprites_hamiltonian_cpu.yaml")])
def test_a_tiny_test_config_shrinks_the_model(tiny, config, capsys):
    printed = parsed(config, "--config", str(tiny), capsys=capsys)["model"]["init_args"]
    for key, value in yaml.safe_load(tiny.read_text())["model"]["init_args"].items():
        assert printed[key] == value
