"""Taking a model out, and seeing what it looks at: ONNX export with a parity check, Grad-CAM explanations.

Public API::

    from toolkit.export import explain, export_run, top_loss_explanations
    result = export_run("runs/<id>", tta="hflip")          # runs/<id>/export/model.onnx + preprocessing.json
    result.parity["max_abs_diff"]                          # onnxruntime vs PyTorch on the run's own images
    shown = explain("runs/<id>", top_losses=12)            # runs/<id>/explain/top-losses/*.png + index.html
    top_loss_explanations(run)                             # what a report embeds (None when absent)
"""

from __future__ import annotations

from toolkit.export.cam import METHODS, CamLayer, Maps, cam_layer, compute_maps, input_geometry, to_original
from toolkit.export.explainer import Explained, ExplainResult, explain, top_loss_explanations
from toolkit.export.exporter import TOLERANCE, ExportResult, check_parity, export_run, parity_images
from toolkit.export.graph import AveragedFolds, export_onnx, output_name

__all__ = [
    "METHODS",
    "TOLERANCE",
    "AveragedFolds",
    "CamLayer",
    "ExplainResult",
    "Explained",
    "ExportResult",
    "Maps",
    "cam_layer",
    "check_parity",
    "compute_maps",
    "explain",
    "export_onnx",
    "export_run",
    "input_geometry",
    "output_name",
    "parity_images",
    "to_original",
    "top_loss_explanations",
]
