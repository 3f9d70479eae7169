"""The scoring models a learned router can use, by kind: knn, cluster, logreg, mlp, mf, task, ensemble."""

from typing import TYPE_CHECKING

from expertgraph.core._lazy import lazy_exports

if TYPE_CHECKING:
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
    "TaskModel": "expertgraph.policies.learning.models.task",
}

__all__ = [
    "ClusterModel",
    "EnsembleModel",
    "KNNModel",
    "LogRegModel",
    "MFModel",
    "MLPModel",
    "TaskModel",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
