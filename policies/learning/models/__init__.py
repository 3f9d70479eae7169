"""The scoring models of learned routers: their contract, and each kind (knn, mlp, mf, ...)."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
    from expertgraph.policies.learning.models.base import (
        MODEL_KINDS,
        ScoringModel,
        make_model,
        model_class,
    )
    from expertgraph.policies.learning.models.cluster import ClusterModel
    from expertgraph.policies.learning.models.ensemble import EnsembleModel
    from expertgraph.policies.learning.models.knn import KNNModel
    from expertgraph.policies.learning.models.linear import LogRegModel, MLPModel
    from expertgraph.policies.learning.models.mf import MFModel
    from expertgraph.policies.learning.models.task import TaskModel

_EXPORTS = {
    "ClusterModel": "expertgraph.policies.learning.models.cluster",
    "EnsembleModel": "expertgraph.policies.learning.models.ensemble",
    "KNNModel": "expertgraph.policies.learning.models.knn",
    "LogRegModel": "expertgraph.policies.learning.models.linear",
    "MFModel": "expertgraph.policies.learning.models.mf",
    "MLPModel": "expertgraph.policies.learning.models.linear",
    "MODEL_KINDS": "expertgraph.policies.learning.models.base",
    "ScoringModel": "expertgraph.policies.learning.models.base",
    "TaskModel": "expertgraph.policies.learning.models.task",
    "make_model": "expertgraph.policies.learning.models.base",
    "model_class": "expertgraph.policies.learning.models.base",
}

__all__ = [
    "ClusterModel",
    "EnsembleModel",
    "KNNModel",
    "LogRegModel",
    "MFModel",
    "MLPModel",
    "MODEL_KINDS",
    "ScoringModel",
    "TaskModel",
    "make_model",
    "model_class",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
