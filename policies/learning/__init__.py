"""Learning routers from data: features, scoring models, training, cost trade-offs, evaluation."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.learning.artifacts import Artifact, load_artifact, save_artifact
    from expertgraph.policies.learning.cost import calibrate_lambda, calibrate_shares, choose
    from expertgraph.policies.learning.evaluate import (
        PolicyReport,
        aiq,
        apgr,
        cpt,
        evaluate,
        pareto_front,
    )
    from expertgraph.policies.routing.cascade import calibrate_threshold
    from expertgraph.policies.routing.learned import (
        MODEL_KINDS,
        Featurizer,
        ScoringModel,
        make_model,
        train_router,
    )

_EXPORTS = {
    "Artifact": "expertgraph.policies.learning.artifacts",
    "Featurizer": "expertgraph.policies.routing.learned",
    "MODEL_KINDS": "expertgraph.policies.routing.learned",
    "PolicyReport": "expertgraph.policies.learning.evaluate",
    "ScoringModel": "expertgraph.policies.routing.learned",
    "aiq": "expertgraph.policies.learning.evaluate",
    "apgr": "expertgraph.policies.learning.evaluate",
    "calibrate_lambda": "expertgraph.policies.learning.cost",
    "calibrate_shares": "expertgraph.policies.learning.cost",
    "calibrate_threshold": "expertgraph.policies.routing.cascade",
    "choose": "expertgraph.policies.learning.cost",
    "cpt": "expertgraph.policies.learning.evaluate",
    "evaluate": "expertgraph.policies.learning.evaluate",
    "load_artifact": "expertgraph.policies.learning.artifacts",
    "make_model": "expertgraph.policies.routing.learned",
    "pareto_front": "expertgraph.policies.learning.evaluate",
    "save_artifact": "expertgraph.policies.learning.artifacts",
    "train_router": "expertgraph.policies.routing.learned",
}

__all__ = [
    "Artifact",
    "Featurizer",
    "MODEL_KINDS",
    "PolicyReport",
    "ScoringModel",
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
    "save_artifact",
    "train_router",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
