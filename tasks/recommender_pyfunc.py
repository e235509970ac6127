"""The registered model: an MLflow pyfunc that recommends catalogue items for a history.

Logged by `tasks.registry.log_recommender` in MLflow's models-from-code form: MLflow stores this
file itself (not a pickled object) and runs it on load, so loading executes only reviewed code.
The artifacts beside it are the model folder (safetensors + tokenizer), the catalogue (Parquet)
and, for grounding, the catalogue's title embeddings (.npy, read with allow_pickle=False). It
ranks with `cft_core.ranking.Ranker` and the `RankingSettings` the run was evaluated with, so
what was measured is what serves.

Input: a DataFrame with a `history` column, one list of strings per user (titles or item ids,
oldest first). Params: `k` (items returned) and `exclude_history`.
Output: one row per user with `item_ids`, `titles` and `scores` lists (best first).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CFTRecommenderModel(PythonModel):
    def load_context(self, context) -> None:
        import json

        import numpy as np
        import pyarrow.parquet as pq
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cft_core.prompts import PromptBuilder
        from cft_core.ranking import Ranker, RankingSettings

        config = dict(context.model_config or {})
        # The settings the run evaluated (and gated) with: method, history length, generation, precision.
        settings = RankingSettings.from_dict(json.loads(config["ranking"]))
        model_dir = context.artifacts["model"]
        catalogue = pq.read_table(context.artifacts["catalogue"]).to_pandas().sort_values("item_id")
        embeddings = None
        if settings.method == "grounding":
            embeddings = torch.from_numpy(np.load(context.artifacts["item_embeddings"], allow_pickle=False))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=settings.torch_dtype, use_safetensors=True)
        self.default_k = int(config.get("top_k", 10))
        self.ranker = Ranker(model.to(device), AutoTokenizer.from_pretrained(model_dir),
                             PromptBuilder.for_domain(config["domain"]), catalogue["item_id"].tolist(),
                             catalogue["title"].tolist(), settings, embeddings)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        if "history" not in model_input.columns:
            raise ValueError(f"input needs a `history` column (list of titles or item ids); got {list(model_input.columns)}")
        histories = [list(h) for h in model_input["history"]]
        k = int(params["k"]) if params.get("k") is not None else self.default_k  # k=0 is an error, not "default"
        recs = self.ranker.recommend(histories, k=k,
                                          exclude_history=bool(params.get("exclude_history", True)))
        return pd.DataFrame({"item_ids": [r.item_ids for r in recs], "titles": [r.titles for r in recs],
                             "scores": [r.scores for r in recs]})


mlflow.models.set_model(CFTRecommenderModel())
