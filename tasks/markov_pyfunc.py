"""The first-order Markov-chain baseline as a registered model: the same input and output as the
LLM recommender (tasks/recommender_pyfunc.py). For each history, the items seen most often right
after its newest item in the run's data window, then the rest by training frequency
(`cft_core.ranking.markov_ranking`). Every data window has one beside the popularity baseline;
an LLM version must beat both to serve (the gate's floor).

Models-from-code, like the LLM recommender: MLflow stores this file, and its artifacts are the
catalogue (Parquet), the item counts (JSON) and the transitions (NumPy .npz of three integer
arrays, read with allow_pickle=False), never a pickle.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class MarkovModel(PythonModel):
    method = "markov"  # what `cft serve` reports (/health, /metrics)

    def load_context(self, context) -> None:
        from cft_core.ranking import Transitions
        from cft_core.serving import baseline_artifacts

        self.catalogue, self.counts, self.default_k = baseline_artifacts(context.artifacts, context.model_config)
        self.transitions = Transitions.load(context.artifacts["transitions"])
        self.transitions.in_markov_order(self.counts)  # each item's followers sorted now, not at the first request

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        from cft_core.ranking import InputError, markov_ranking
        from cft_core.serving import resolve_request, response_columns

        try:  # the input's fault: 400 with the reason, no stack trace
            k, resolved, excluded = resolve_request(self.catalogue, model_input, params, self.default_k)
        except InputError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
        newest = [r.rows[-1] if r.rows else -1 for r in resolved]  # entries it lacks are left out
        ranking = markov_ranking(self.transitions, self.counts, newest, k, excluded, never=self.catalogue.never)
        recs = self.catalogue.recommendations(ranking, unmatched=[r.unmatched for r in resolved])
        return pd.DataFrame(response_columns(recs))


mlflow.models.set_model(MarkovModel())
