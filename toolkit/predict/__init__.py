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
    FoldStatus,
    Inference,
    SingleProcess,
    check_input_sizes,
    combine_views,
    fold_status,
    pipelines_for,
    select_folds,
)
from toolkit.predict.exported import ExportedGraphs, OnnxInference, onnx_session, open_export
from toolkit.predict.inputs import PredictionInput, read_input
from toolkit.predict.predictor import PredictResult, choose_tta, default_name, predict, score_predictions
from toolkit.predict.submission import align_to_sample, build_submission, read_sample
from toolkit.predict.tta import AUTO_POLICIES, VIEW_NAMES, View, build_views, parse_tta

__all__ = [
    "AUTO_POLICIES",
    "VIEW_NAMES",
    "ExportedGraphs",
    "FoldStatus",
    "Inference",
    "OnnxInference",
    "PredictResult",
    "PredictionInput",
    "View",
    "align_to_sample",
    "build_submission",
    "build_views",
    "check_input_sizes",
    "choose_tta",
    "combine_views",
    "default_name",
    "fold_status",
    "parse_tta",
    "pipelines_for",
    "predict",
    "read_input",
    "read_sample",
    "score_predictions",
    "select_folds",
    "SingleProcess",
    "onnx_session",
    "open_export",
]
