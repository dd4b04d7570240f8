"""Prediction: a run's fold models × test-time views over new images, scored when labels are known.

Public API::

    from toolkit.predict import predict
    result = predict("runs/<id>", "data/test", tta="hflip,scale:1.15", folds="all")
    result.probs["label"]          # [N, C] probabilities in the run's class order
    result.files["csv"]            # runs/<id>/predictions/test-hflip_scale1.15.csv

See :mod:`toolkit.predict.tta` for the views and :mod:`toolkit.predict.submission` for the files.
"""

from __future__ import annotations

from toolkit.predict.engine import (
    FoldModel,
    Inference,
    available_folds,
    batch_normalizer,
    check_input_sizes,
    combine_views,
    eval_size,
    eval_transform,
    image_loader,
    load_fold_model,
    run_classes,
    select_folds,
    train_transform,
)
from toolkit.predict.inputs import PredictionInput, read_input
from toolkit.predict.predictor import PredictResult, choose_tta, default_name, predict, score_predictions
from toolkit.predict.submission import align_to_sample, build_submission, probability_frame, read_sample
from toolkit.predict.tta import AUTO_POLICIES, VIEW_NAMES, View, build_views, parse_tta

__all__ = [
    "AUTO_POLICIES",
    "VIEW_NAMES",
    "FoldModel",
    "Inference",
    "PredictResult",
    "PredictionInput",
    "View",
    "align_to_sample",
    "available_folds",
    "build_submission",
    "build_views",
    "check_input_sizes",
    "choose_tta",
    "combine_views",
    "default_name",
    "eval_size",
    "batch_normalizer",
    "eval_transform",
    "image_loader",
    "load_fold_model",
    "parse_tta",
    "predict",
    "probability_frame",
    "read_input",
    "read_sample",
    "run_classes",
    "score_predictions",
    "select_folds",
    "train_transform",
]
