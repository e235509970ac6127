"""Register stage: the baselines, the recommender, and the champion/challenger gate.

    data window --register_baselines---> a popularity and a Markov-chain baseline version (once
                                         per data window); popularity is the first champion
    evaluated run --log_recommender----> pyfunc model in the run (models-from-code)
                  --register_model-----> version N of `cft-<dataset>` (once per run), model card
                  --gate_model---------> on the same newest rows: N vs the champion (as it
                                         serves: its own catalogue and settings) vs this
                                         window's baselines; `champion` moves to N only if N
                                         beats the champion by the margin AND each baseline (the
                                         floor); else the best baseline that beats the champion
                                         becomes champion

Aliases, not the deprecated stages, carry the roles (environment-notes.md). Every change of the
champion (gate, `cft promote`, `cft rollback`) is appended to the registered model's
`champion_history` tag with its reason, and runs under a per-model file lock so two promotions
never interleave; on a team stack the flow's promote task is also limited to one at a time by a
Prefect concurrency limit (prefect.yaml).

One job a module: `names` (aliases, tags, URIs, the client), `registration` (the recommender and the
baselines), `champion` (the alias and its history), `gate`, `loading` (a version's pyfunc and model),
`retention` (summaries, expendable versions). This package exports what the stages and commands use.
"""

from tasks.registry.champion import (
    BY_MAX_CHARS,
    HISTORY_MAX_CHARS,
    REASON_MAX_CHARS,
    challenger_left_note,
    champion_history,
    champion_stack,
    check_by,
    check_reason,
    promote,
    rollback,
    set_champion,
)
from tasks.registry.gate import (
    GateDecision,
    decide,
    gate_card,
    gate_model,
    previous_decision,
)
from tasks.registry.loading import (
    LoadedPyfunc,
    artifacts_read_in_place,
    download_version_model,
    holds_model_folder,
    warm_start_source,
)
from tasks.registry.names import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    KIND_TAG,
    MODEL_URI,
    RANKING_KEY_TAG,
    RECOMMENDER_TAG,
    alias_version,
    champion_uri,
    is_baseline,
    llm_version,
    promotion_lock,
    registered_models,
    registered_version,
    registry_client,
    served_ranking_key,
    versions_newest_first,
)
from tasks.registry.registration import (
    BASELINE_CARDS,
    BASELINE_PYFUNCS,
    MODEL_ARTIFACT,
    PYFUNC_FILE,
    answers_source_ids,
    log_recommender,
    model_card,
    register,
    register_baseline,
    register_baselines,
    register_model,
    takes_exclude,
    version_tags,
    window_baselines,
)
from tasks.registry.retention import (
    RECENT_VERSION_S,
    VersionSummary,
    delete_version,
    expendable_versions,
    registered_model_dirs,
    version_bytes,
    versions_summary,
)

__all__ = [
    "BASELINE_CARDS",
    "BASELINE_PYFUNCS",
    "BY_MAX_CHARS",
    "CHALLENGER",
    "CHAMPION",
    "GateDecision",
    "HISTORY_MAX_CHARS",
    "HISTORY_TAG",
    "KIND_TAG",
    "LoadedPyfunc",
    "MODEL_ARTIFACT",
    "MODEL_URI",
    "PYFUNC_FILE",
    "RANKING_KEY_TAG",
    "REASON_MAX_CHARS",
    "RECENT_VERSION_S",
    "RECOMMENDER_TAG",
    "VersionSummary",
    "alias_version",
    "answers_source_ids",
    "artifacts_read_in_place",
    "challenger_left_note",
    "champion_history",
    "champion_stack",
    "champion_uri",
    "check_by",
    "check_reason",
    "decide",
    "delete_version",
    "download_version_model",
    "expendable_versions",
    "gate_card",
    "gate_model",
    "holds_model_folder",
    "is_baseline",
    "llm_version",
    "log_recommender",
    "model_card",
    "previous_decision",
    "promote",
    "promotion_lock",
    "register",
    "register_baseline",
    "register_baselines",
    "register_model",
    "registered_model_dirs",
    "registered_models",
    "registered_version",
    "registry_client",
    "rollback",
    "served_ranking_key",
    "set_champion",
    "takes_exclude",
    "version_bytes",
    "version_tags",
    "versions_newest_first",
    "versions_summary",
    "warm_start_source",
    "window_baselines",
]
