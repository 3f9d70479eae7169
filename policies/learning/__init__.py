"""Learning routers from data: features, scoring models, training, cost trade-offs, evaluation."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.learning.artifacts import Artifact, load_artifact, save_artifact
    from expertgraph.policies.learning.calibration import CascadeCalibration, calibrate_threshold
    from expertgraph.policies.learning.cascade_fit import train_cascade
    from expertgraph.policies.learning.cascade_plan import CascadePlan, StagePlan
    from expertgraph.policies.learning.cost import calibrate_lambda, calibrate_shares, choose
    from expertgraph.policies.learning.evaluate import (
        PolicyReport,
        aiq,
        apgr,
        cpt,
        evaluate,
        pareto_front,
    )
    from expertgraph.policies.learning.features import Featurizer
    from expertgraph.policies.learning.models.base import MODEL_KINDS, ScoringModel, make_model
    from expertgraph.policies.learning.replay_eval import ReplayReport, replay_rows
    from expertgraph.policies.learning.training import train_router

_EXPORTS = {
    "Artifact": "expertgraph.policies.learning.artifacts",
    "CascadeCalibration": "expertgraph.policies.learning.calibration",
    "CascadePlan": "expertgraph.policies.learning.cascade_plan",
    "Featurizer": "expertgraph.policies.learning.features",
    "MODEL_KINDS": "expertgraph.policies.learning.models.base",
    "PolicyReport": "expertgraph.policies.learning.evaluate",
    "ReplayReport": "expertgraph.policies.learning.replay_eval",
    "ScoringModel": "expertgraph.policies.learning.models.base",
    "StagePlan": "expertgraph.policies.learning.cascade_plan",
    "aiq": "expertgraph.policies.learning.evaluate",
    "apgr": "expertgraph.policies.learning.evaluate",
    "calibrate_lambda": "expertgraph.policies.learning.cost",
    "calibrate_shares": "expertgraph.policies.learning.cost",
    "calibrate_threshold": "expertgraph.policies.learning.calibration",
    "choose": "expertgraph.policies.learning.cost",
    "cpt": "expertgraph.policies.learning.evaluate",
    "evaluate": "expertgraph.policies.learning.evaluate",
    "load_artifact": "expertgraph.policies.learning.artifacts",
    "make_model": "expertgraph.policies.learning.models.base",
    "pareto_front": "expertgraph.policies.learning.evaluate",
    "replay_rows": "expertgraph.policies.learning.replay_eval",
    "save_artifact": "expertgraph.policies.learning.artifacts",
    "train_cascade": "expertgraph.policies.learning.cascade_fit",
    "train_router": "expertgraph.policies.learning.training",
}

__all__ = [
    "Artifact",
    "CascadeCalibration",
    "CascadePlan",
    "Featurizer",
    "MODEL_KINDS",
    "PolicyReport",
    "ReplayReport",
    "ScoringModel",
    "StagePlan",
    "aiq",
    "apgr",
    "calibrate_lambda",
    "calibrate_shares",
    "calibrate_threshold",
    "choose",
    "cpt",
    "evaluate",
    "load_artifact",
    "make_model",
    "pareto_front",
    "replay_rows",
    "save_artifact",
    "train_cascade",
    "train_router",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
