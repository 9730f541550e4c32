from dataclasses import dataclass, field

import pytest

from nsync.config import load_config, parse_args
from nsync.errors import NsyncError
from nsync.simulation.config import SimulateConfig


@dataclass
class Inner:
    alpha: float = 0.1
    name: str = "x"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    layers: list[int] = field(default_factory=lambda: [1, 2])


def test_overrides_with_and_without_dashes():
    cfg = load_config(Outer, ["inner.alpha=0.5", "--inner.name=y", "layers=[3,4]"], prog="t")
    assert cfg.inner.alpha == 0.5 and cfg.inner.name == "y" and cfg.layers == [3, 4]


def test_config_files_merge_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("inner:\n  alpha: 1.0\n  name: a\n")
    b.write_text("inner:\n  alpha: 2.0\n")
    cfg = load_config(Outer, ["--config", str(a), f"--config={b}", "inner.name=c"], prog="t")
    assert (cfg.inner.alpha, cfg.inner.name) == (2.0, "c")


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(NsyncError, match=r"unknown config key 'inner.alpah'.*inner.alpha"):
        load_config(Outer, ["inner.alpah=1"], prog="t")


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("innr:\n  alpha: 1\n")
    with pytest.raises(NsyncError, match="bad.yaml"):
        load_config(Outer, ["--config", str(f)], prog="t")


def test_wrong_type_is_an_error():
    with pytest.raises(NsyncError, match="inner.alpha"):
        load_config(Outer, ["inner.alpha=abc"], prog="t")


def test_bad_argument_and_missing_file():
    with pytest.raises(NsyncError, match="cannot parse"):
        parse_args(["oops"])
    with pytest.raises(NsyncError, match="not found"):
        load_config(Outer, ["--config", "/nonexistent.yaml"], prog="t")
    with pytest.raises(NsyncError, match="quote values"):
        load_config(Outer, ["inner.alpha=[a=[0],b]"], prog="t")


def test_post_init_validation_reaches_user():
    with pytest.raises(NsyncError, match="prompt_format"):
        load_config(SimulateConfig, ["out=x", "prompt_format=nope"], prog="t")
    with pytest.raises(NsyncError, match=r"seeds lists a seed twice \(\[0, 1, 0\]\)"):  # two runs of one run id
        load_config(SimulateConfig, ["out=x", "seeds=[0,1,0]"], prog="t")


def test_a_single_value_for_a_list_and_space_separated_keys():
    """`affine.alphas=5` is the grid of one alpha; `--bootstrap 10` is `bootstrap=10`."""
    from nsync.fit import FitConfig

    cfg = load_config(FitConfig, ["data.cache=c", "out=o", "affine.alphas=5", "--bootstrap", "10", "data.split_seeds=0"], prog="t")
    assert cfg.affine.alphas == [5.0] and cfg.bootstrap == 10 and cfg.data.split_seeds == [0]
