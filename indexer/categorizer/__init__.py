"""The decision: the k-NN vote (`vote`), exclusions, query kinds (`kinds`), simulated listings
(`listings`), finite-sample thresholds and the disagreement rule (`thresholds`), the confidence
combiner (`combiner`), and the fitting protocol (nested and deployment calibration) in `protocol`."""

from indexer.categorizer.bulk import predict_listings, read_csv, read_json_lines
from indexer.categorizer.combiner import score as combiner_score
from indexer.categorizer.kinds import KINDS, PLAIN, QueryKind, describe, warm_up
from indexer.categorizer.listings import SORTS, ListingMaterial, listing_material
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
    choose_threshold,
    fit,
    grouped_folds,
    near_duplicate_groups,
    near_duplicate_pairs,
    nested_predictions,
    training_view,
    usable_folds,
)
from indexer.categorizer.reasons import explain, top_choices
from indexer.categorizer.thresholds import DELTA, finite_sample_threshold, upper_bound
from indexer.categorizer.vote import Categorizer, Neighbor, Prediction, query_channels, query_text, stored_queries

__all__ = [
    "DELTA",
    "KINDS",
    "PLAIN",
    "SORTS",
    "ListingMaterial",
    "QueryKind",
    "describe",
    "finite_sample_threshold",
    "listing_material",
    "upper_bound",
    "warm_up",
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
    "choose_threshold",
    "combiner_score",
    "fit",
    "grouped_folds",
    "near_duplicate_groups",
    "near_duplicate_pairs",
    "nested_predictions",
    "predict_listings",
    "query_channels",
    "query_text",
    "read_csv",
    "read_json_lines",
    "stored_queries",
    "top_choices",
    "training_view",
    "usable_folds",
]
