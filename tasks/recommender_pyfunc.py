"""The registered model: an MLflow pyfunc that recommends catalogue items for a history.

Logged by `tasks.registry.log_recommender` in MLflow's models-from-code form: MLflow stores this
file itself (not a pickled object) and runs it on load, so loading executes only reviewed code.
The artifacts beside it are the model folder (safetensors + tokenizer), the catalogue (Parquet)
and, for grounding, the catalogue's title embeddings (.npy, read with allow_pickle=False). It
ranks with `cft_core.ranking.Ranker` and the `RankingSettings` the run was evaluated with, so
what was measured is what serves.

Input: a DataFrame with a `history` column, one list of strings per user (titles or item ids,
oldest first), and optionally an `exclude` column: per user, items never to return (ids or
titles; everything the user already has, which may be more than the history the model is shown).
Item ids are the source's own (`source_item_id` of the catalogue: the ids of the user's data,
stable across data windows), never the per-window dense ids. Params
(`cft_core.serving.RequestParams`): `k`, `exclude_history`, `free_text`.
Output: one row per user with `item_ids`, `titles` and `scores` lists (best first; scores as
`cft_core.ranking` defines them, never increasing; None for the items a constrained model's
popularity backfill added after its beams) and `unmatched` (history titles that are no catalogue
item).

Concurrent `predict` calls (one per request thread of `mlflow models serve`, or `cft serve`'s
requests) are batched into shared generation calls (`cft_core.serving.BatchingRecommender`,
settings from the environment: `cft_core.serving.ServingSettings`): at most 16 histories per call
and 64 waiting requests by default; beyond that a request gets 503.
Input mistakes get 400 with a message naming the problem, checked before anything is generated.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CFTRecommenderModel(PythonModel):
    def load_context(self, context) -> None:
        import json
        from dataclasses import replace

        import numpy as np
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cft_core.prompts import PromptBuilder
        from cft_core.ranking import Ranker, RankingSettings, served_catalogue
        from cft_core.serving import BatchingRecommender, ServingSettings, read_counts

        config = dict(context.model_config or {})
        # The settings the run evaluated (and gated) with: method, history length, generation, precision.
        settings = RankingSettings.from_dict(json.loads(config["ranking"]))
        serving = ServingSettings.from_env()
        # A served batch is generated in one call, whatever the evaluation's chunk size was.
        settings = replace(settings, generation=replace(settings.generation, batch_size=serving.max_batch))
        model_dir = context.artifacts["model"]
        item_ids, titles = served_catalogue(context.artifacts["catalogue"])
        embeddings = None
        if settings.method == "grounding":
            embeddings = torch.from_numpy(np.load(context.artifacts["item_embeddings"], allow_pickle=False))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # The backfill's training counts (RankingSettings.backfill), where the version ships them.
        popularity = read_counts(context.artifacts["popularity"]) if "popularity" in context.artifacts else None
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=settings.torch_dtype, use_safetensors=True)
        self.default_k = int(config.get("top_k", 10))
        ranker = Ranker(model.to(device), AutoTokenizer.from_pretrained(model_dir),
                        PromptBuilder.for_domain(config["domain"]), item_ids, titles, settings, embeddings, popularity)
        self.catalogue = ranker.catalogue
        self.recommender = BatchingRecommender(ranker, serving.max_batch, serving.max_queue, serving.batch_wait_s)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

        from cft_core.ranking import InputError
        from cft_core.serving import Overloaded, exclude_lists, parse_request, response_columns

        try:  # the input's fault: 400 with the reason, no stack trace
            histories, p = parse_request(model_input, params, self.default_k)
            recs = self.recommender.recommend(histories, p.k, p.exclude_history, p.free_text,
                                              exclude_lists(model_input))
        except InputError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
        except Overloaded as error:
            raise MlflowException(str(error), error_code=TEMPORARILY_UNAVAILABLE) from None
        return pd.DataFrame(response_columns(recs))


mlflow.models.set_model(CFTRecommenderModel())
