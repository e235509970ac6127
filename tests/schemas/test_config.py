"""The run config: profiles, `extends`, overrides, and what the validators refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.config import PipelineConfig, load_config, read_profile
from schemas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_profile_validates():
    for profile in sorted((ROOT / "configs").glob("*.yaml")):
        assert isinstance(load_config(profile), PipelineConfig), profile


def test_extends_merges_sections_field_by_field(tmp_path):
    write(tmp_path, "base.yaml", "data: {name: base, k_core: 3}\ntrain: {alpha: 0.2, beta: 0.5}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain: {beta: 0.9}\n")
    cfg = load_config(child)
    assert (cfg.data.name, cfg.data.k_core) == ("base", 3)  # inherited
    assert (cfg.train.alpha, cfg.train.beta) == (0.2, 0.9)  # merged: one field replaced, one kept
    assert "extends" not in read_profile(child)


def test_extends_chains_resolve_relative_to_each_profile(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "root.yaml", "data: {name: root}\n")
    write(tmp_path / "sub", "mid.yaml", "extends: ../root.yaml\ndata: {k_core: 2}\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: sub/mid.yaml\ndata: {max_history: 4}\n")
    d = load_config(leaf).data
    assert (d.name, d.k_core, d.max_history) == ("root", 2, 4)


def test_extends_loop_and_missing_parent_are_refused(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    orphan = write(tmp_path, "orphan.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml not found"):
        load_config(orphan)


def test_overrides_as_strings_and_as_a_mapping(tmp_path):
    profile = write(tmp_path, "p.yaml", "train: {alpha: 0.1}\n")
    cfg = load_config(profile, ["train.alpha=0.3", "data.max_samples={test: 5}"])
    assert cfg.train.alpha == 0.3 and cfg.data.max_samples == {"test": 5}
    assert load_config(profile, {"train.objective": "sft"}).train.loss_settings() == (0.0, 1.0)
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(profile, ["train.alpha"])


def test_a_source_made_champion_keeps_the_profiles_model_as_its_base(tmp_path):
    """`model.source: champion` laid over a profile that names a model starts from that model while
    no LLM version is champion, unless `model.base` says otherwise; `smollm2` where none was named."""
    tiny = write(tmp_path, "tiny.yaml", "model: {source: tiny}\n")
    for overrides in (["model.source=champion"], {"model.source": "champion"}):
        model = load_config(tiny, overrides).model
        assert (model.source, model.base, model.base_model()) == ("champion", "tiny", "tiny")
    assert load_config(tiny).updated({"model.source": "champion"}).model.base == "tiny"  # a flow's overrides
    child = write(tmp_path, "retrain.yaml", "extends: tiny.yaml\nmodel: {source: champion}\n")
    assert load_config(child).model.base == "tiny"
    # Given explicitly, before or after the source, in the profile or as an override: kept.
    assert load_config(tiny, ["model.base=smollm2", "model.source=champion"]).model.base == "smollm2"
    assert load_config(tiny, ["model.source=champion", "model.base=smollm2"]).model.base == "smollm2"
    explicit = write(tmp_path, "explicit.yaml", "extends: tiny.yaml\nmodel: {source: champion, base: smollm2}\n")
    assert load_config(explicit).model.base == "smollm2"
    # Nothing named: SmolLM2, and a source that is not champion starts from itself.
    bare = write(tmp_path, "bare.yaml", "model: {source: champion}\n")
    assert (load_config(bare).model.base, load_config(bare).model.base_model()) == (None, "smollm2")
    assert load_config(write(tmp_path, "none.yaml", "data: {name: x}\n"), ["model.source=champion"]).model.base is None
    assert load_config(tiny, ["model.base=smollm2"]).model.base_model() == "tiny"


def test_an_unset_base_names_the_training_folder_as_smollm2_did():
    """Trainings written before `model.base` could be inherited keep their folders: an unset base
    is fingerprinted as the "smollm2" it used to default to, an inherited one as what it is."""
    from tasks.training import run_fingerprint

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert cfg.model.base is None
    assert run_fingerprint(cfg, "data") == run_fingerprint(cfg.updated({"model.base": "smollm2"}), "data")
    inherited = cfg.updated({"model.source": "champion"})
    assert inherited.model.base == "tiny"
    assert run_fingerprint(inherited, "data") != run_fingerprint(inherited.updated({"model.base": "smollm2"}), "data")


@pytest.mark.parametrize(("fields", "message"), [
    ({"data": {"split_ratios": [0.5, 0.2, 0.2]}}, "split_ratios must sum to 1"),
    ({"data": {"source": {"format": "generic"}}}, "source.path is required"),
    ({"train": {"unknown": 1}}, "Extra inputs are not permitted"),
    ({"train": {"beta": 0}}, "greater than 0"),
    ({"eval": {"methods": ["magic"]}}, "grounding"),
    ({"data": {"split_ratios": [1, 0, 0]}}, "every split non-empty"),
    ({"data": {"max_samples": {"train": -5}}}, "at least 1"),
    ({"data": {"train_window": "six months"}}, "pattern"),
    ({"registry": {"gate_metric": "NDCG@10"}}, "pattern"),
    ({"eval": {"num_beams": 10, "constrained_search_beams": 5}}, r"constrained_search_beams \(5\) must be at least num_beams \(10\)"),
])
def test_invalid_fields_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate(fields)


def test_objectives_and_the_gate_evaluation():
    assert PipelineConfig.model_validate({"train": {"objective": "pos", "beta": 0.3}}).train.loss_settings() == (0.0, 0.3)
    assert PipelineConfig().train.loss_settings() == (0.1, 0.25)  # the reference's alpha and beta
    cfg = PipelineConfig.model_validate({"eval": {"max_samples": 40, "methods": ["grounding", "constrained"]},
                                         "registry": {"gate_metric": "constrained/NDCG@10"}})
    gate = cfg.gate_eval()
    assert (gate.split, gate.max_samples, gate.methods, gate.history_reliance) == ("valid", 40, ["constrained"], False)
    assert cfg.eval.diagnostics and not gate.diagnostics and not gate.sasrec  # the gate reads only ranks


def test_the_wider_constrained_search_reaches_the_constrained_ranking_only():
    from tasks.settings import ranking_settings

    cfg = PipelineConfig.model_validate({"eval": {"num_beams": 5, "constrained_search_beams": 10}})
    assert ranking_settings(cfg, "constrained").search_beams == 10
    assert ranking_settings(cfg, "grounding").search_beams is None
    assert ranking_settings(PipelineConfig(), "constrained").search_beams is None


def test_ranked_prompts_are_cut_to_the_training_cutoff_len():
    from tasks.settings import ranking_settings

    cfg = PipelineConfig.model_validate({"train": {"cutoff_len": 300}})
    assert {ranking_settings(cfg, m).cutoff_len for m in ("constrained", "grounding")} == {300}


def test_a_time_without_an_offset_is_utc_whatever_the_machine_zone(monkeypatch):
    """The same profile cuts the same window on a laptop in New York as on a UTC server: before,
    a naive window_start was read in the machine's zone (4 hours later in New York)."""
    import time

    from schemas.config import DataConfig
    from tasks.settings import sequence_settings

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        data = DataConfig(window_start="2017-10-01", window_end="2018-11-01 12:00", max_timestamp="2030-01-01",
                          as_of="2018-06-01T00:00:00+02:00")
        settings = sequence_settings(data)
        assert (settings.window_start, settings.window_end) == (1_506_816_000, 1_541_073_600)
        assert data.timestamp_bounds()[1] == 1_893_456_000 and data.as_of_seconds() == 1_527_804_000  # (offset kept)
        # A copy with model_copy skips the validators: the conversion to seconds reads it as UTC too.
        from datetime import datetime

        copied = data.model_copy(update={"window_start": datetime(2017, 10, 1), "as_of": datetime(2018, 6, 1)})
        assert sequence_settings(copied).window_start == 1_506_816_000 and copied.as_of_seconds() == 1_527_811_200
    finally:
        monkeypatch.undo()
        time.tzset()
