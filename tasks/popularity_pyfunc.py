"""The popularity baseline as a registered model: the same input and output as the LLM
recommender (tasks/recommender_pyfunc.py), ranking the catalogue by training frequency in the
run's data window. Every data window has one beside the Markov-chain baseline
(tasks/markov_pyfunc.py); it is the first champion, and an LLM version must beat both to serve
(the gate's floor).

Models-from-code, like the LLM recommender: MLflow stores this file, and its artifacts are the
catalogue (Parquet) and the item counts (JSON), never a pickle.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class PopularityModel(PythonModel):
    method = "popularity"  # what `cft serve` reports (/health, /metrics)

    def load_context(self, context) -> None:
        from cft_core.serving import baseline_artifacts

        self.catalogue, self.counts, self.default_k = baseline_artifacts(context.artifacts, context.model_config)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        from cft_core.ranking import InputError, popularity_ranking
        from cft_core.serving import resolve_request, response_columns

        try:  # the input's fault: 400 with the reason, no stack trace
            k, resolved, excluded = resolve_request(self.catalogue, model_input, params, self.default_k)
        except InputError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
        ranking = popularity_ranking(self.counts, len(resolved), k, excluded, never=self.catalogue.never)
        recs = self.catalogue.recommendations(ranking, unmatched=[r.unmatched for r in resolved])
        return pd.DataFrame(response_columns(recs))


mlflow.models.set_model(PopularityModel())
