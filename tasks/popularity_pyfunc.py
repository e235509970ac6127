"""The popularity baseline as a registered model: the same input and output as the LLM
recommender (tasks/recommender_pyfunc.py), ranking the catalogue by training frequency in the
run's data window. Every registered model has one; it is the first champion, and an LLM version
must beat it to serve (the gate's floor).

Models-from-code, like the LLM recommender: MLflow stores this file, and its artifacts are the
catalogue (Parquet) and the item counts (JSON), never a pickle.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class PopularityModel(PythonModel):
    def load_context(self, context) -> None:
        import json

        import numpy as np
        import pyarrow.parquet as pq

        from cft_core.ranking import Catalogue

        catalogue = pq.read_table(context.artifacts["catalogue"]).to_pandas().sort_values("item_id")
        self.catalogue = Catalogue(catalogue["item_id"].tolist(), catalogue["title"].tolist())
        counts = json.loads(Path(context.artifacts["counts"]).read_text(encoding="utf-8"))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.default_k = int(dict(context.model_config or {}).get("top_k", 10))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        from cft_core.ranking import InputError, check_history, popularity_ranking
        from cft_core.serving import RequestParams

        try:  # the input's fault: 400 with the reason, no stack trace
            if "history" not in model_input.columns:
                raise InputError(f"input needs a `history` column (list of titles or item ids); "
                                 f"got {list(model_input.columns)}")
            p = RequestParams.parse(params, self.default_k)
            k = self.catalogue.check_k(p.k)
            resolved = [self.catalogue.resolve(check_history(h, i), p.free_text)
                        for i, h in enumerate(model_input["history"])]
        except InputError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
        exclude = [r.rows for r in resolved] if p.exclude_history else None
        ranking = popularity_ranking(self.counts, len(resolved), k, exclude, never=self.catalogue.never)
        recs = self.catalogue.recommendations(ranking, unmatched=[r.unmatched for r in resolved])
        return pd.DataFrame({"item_ids": [r.item_ids for r in recs], "titles": [r.titles for r in recs],
                             "scores": [r.scores for r in recs], "unmatched": [r.unmatched for r in recs]})


mlflow.models.set_model(PopularityModel())
