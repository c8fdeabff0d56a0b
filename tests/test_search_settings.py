"""Search settings: presets per method, typed method configs, legacy configs."""

import json
import os

import pytest

from tfnas.search.settings import (DartsConfig, EnasConfig, METHODS, RandomConfig, SearchSettings,
                                   SearchSettingsError)

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_runs")


def test_presets_and_method_configs():
    darts = SearchSettings.from_preset("paper", method="darts", order=2)
    assert (darts.epochs, darts.batch_size, darts.init_channels, darts.layers) == (50, 64, 16, 8)
    assert darts.config == DartsConfig(order=2) and darts.space == "darts"
    enas = SearchSettings.from_preset("paper", method="enas")
    assert (enas.epochs, enas.batch_size, enas.init_channels, enas.layers) == (150, 160, 20, 8)
    assert isinstance(enas.config, EnasConfig) and enas.space == "enas" and enas.validation == 0.1
    assert enas.config.controller_updates == 30 and enas.config.samples_per_update == 10
    small = SearchSettings.from_preset("small", method="enas")
    assert small.config.controller_updates < 30
    assert isinstance(SearchSettings.from_preset("small", method="random").config, RandomConfig)
    assert SearchSettings.from_dict(json.loads(json.dumps(enas.to_dict()))) == enas
    assert set(METHODS) == {"darts", "enas", "random"}


def test_bad_settings_are_one_line_errors():
    with pytest.raises(SearchSettingsError, match="unknown enas search setting 'order'"):
        SearchSettings.from_preset("small", method="enas", order=2)
    with pytest.raises(SearchSettingsError, match="unknown search method 'nas'"):
        SearchSettings.from_preset("small", method="nas")
    with pytest.raises(SearchSettingsError, match="use hessian fd"):
        SearchSettings.from_preset("small", order=2, hessian="exact", low_memory=True)
    with pytest.raises(SearchSettingsError, match="kernels must be one of auto, cpu, standard"):
        SearchSettings.from_preset("small", kernels="gpu")
    assert SearchSettings.from_preset("small", kernels="standard").config.kernels == "standard"


def test_a_config_written_before_method_config_reads_as_darts():
    with open(os.path.join(LEGACY, "search-stopped", "config.json")) as fh:
        raw = json.load(fh)
    assert "darts" in raw and "method_config" not in raw
    settings = SearchSettings.from_dict(raw)
    assert settings.method == "darts" and settings.config.order == 1
    assert settings.config.low_memory is False
    # The checkpoint meta is the one that run's checkpoint holds.
    with open(os.path.join(LEGACY, "search-stopped", "checkpoints", "ckpt-000001", "state.json")) as fh:
        assert json.load(fh)["meta"] == settings.checkpoint_meta()
