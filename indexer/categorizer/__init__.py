"""The decision: the k-NN vote (`vote`), exclusions, and the fitting protocol (nested and deployment
calibration, thresholds) in `protocol`."""

from indexer.categorizer.protocol import (
    EVAL_SEEDS,
    FUSED,
    GROUP_THRESHOLDS,
    N_FOLDS,
    PARAM_GRID,
    TARGET_PRECISION,
    TRADE_OFF_TARGETS,
    Fitted,
    NestedRun,
    calibrate,
    channel_similarities,
    fit,
    grouped_folds,
    near_duplicate_groups,
    near_duplicate_pairs,
    nested_predictions,
    training_view,
    usable_folds,
)
from indexer.categorizer.reasons import explain, top_choices
from indexer.categorizer.vote import Categorizer, Neighbor, Prediction, query_channels, query_text, stored_queries

__all__ = [
    "Categorizer",
    "EVAL_SEEDS",
    "FUSED",
    "Fitted",
    "GROUP_THRESHOLDS",
    "N_FOLDS",
    "Neighbor",
    "NestedRun",
    "PARAM_GRID",
    "Prediction",
    "TARGET_PRECISION",
    "TRADE_OFF_TARGETS",
    "calibrate",
    "channel_similarities",
    "explain",
    "fit",
    "grouped_folds",
    "near_duplicate_groups",
    "near_duplicate_pairs",
    "nested_predictions",
    "query_channels",
    "query_text",
    "stored_queries",
    "top_choices",
    "training_view",
    "usable_folds",
]
