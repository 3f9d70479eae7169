"""Learned routing policies on small built data, with the real bundled MiniLM embedder.

Three kinds of prompts (arithmetic, capital cities, code) and three experts: two cheap
specialists (``mathbot``, ``quizbot``) and an expensive generalist (``bigbot``) that is the
only one good at code. Every kind of router must learn who is good at what, trade quality
for cost through lambda, survive a save/load round trip bit for bit, and refuse an artifact
trained for other experts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from expertgraph.core import ExpertHealth, ExpertView, RoutingState
from expertgraph.core.errors import ConfigError, PolicyError
from expertgraph.core.types import ExpertCard, PlanStep, RoutingExample, Task
from expertgraph.policies.data.dataset import from_examples, save_jsonl
from expertgraph.policies.learning.models.base import MODEL_KINDS
from expertgraph.policies.learning.training import train_router
from expertgraph.policies.registry import BuildContext, build_policy
from expertgraph.policies.routing.learned import LearnedRouter

pytestmark = pytest.mark.models

EXPERTS = ["mathbot", "quizbot", "bigbot"]
PRICES = {"mathbot": 0.1, "quizbot": 0.1, "bigbot": 1.0}
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Italy", "Rome"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Norway", "Oslo"),
    ("Spain", "Madrid"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
    ("Ghana", "Accra"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Nepal", "Kathmandu"),
    ("Sweden", "Stockholm"),
    ("Austria", "Vienna"),
    ("Portugal", "Lisbon"),
    ("Hungary", "Budapest"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"),
    ("Turkey", "Ankara"),
]
CODE = [
    "reverse a string",
    "sort a list of integers",
    "check if a number is prime",
    "merge two dictionaries",
    "count the vowels in a word",
    "flatten a nested list",
    "compute a factorial recursively",
    "remove duplicates from a list",
    "parse a CSV line",
    "find the maximum of a list",
    "read a JSON file",
    "compute the fibonacci sequence",
    "convert celsius to fahrenheit",
    "validate an email address",
    "transpose a matrix",
    "capitalize each word",
    "compute a moving average",
    "zip two lists into a dict",
]


def _math(rng: random.Random) -> str:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return rng.choice(
        [
            "What is {a} plus {b}?",
            "Compute {a} times {b}.",
            "How much is {a} minus {b}?",
            "Calculate {a} divided by {b}.",
        ]
    ).format(a=a, b=b)


def _quiz(country: str, rng: random.Random) -> str:
    return rng.choice(
        [
            "What is the capital city of {c}?",
            "Which city is the capital of {c}?",
            "Name the capital of {c}.",
        ]
    ).format(c=country)


def _code(what: str, rng: random.Random) -> str:
    return rng.choice(
        [
            "Write a Python function to {w}.",
            "Implement a function that will {w} in Python.",
            "def solve(x):  # {w}",
        ]
    ).format(w=what)


def build_rows(seed: int, per_task: int) -> list[RoutingExample]:
    """Rows whose scores follow who is good at what, with a little noise."""
    rng = random.Random(seed)
    rows: list[RoutingExample] = []
    for i in range(per_task):
        noise = rng.random()
        rows.append(
            RoutingExample(
                id=f"m{seed}-{i}",
                prompt=_math(rng),
                task="math",
                scores={"mathbot": 1.0, "quizbot": 0.0, "bigbot": 1.0 if noise < 0.7 else 0.0},
            )
        )
        country, _ = CAPITALS[(i + seed) % len(CAPITALS)]
        rows.append(
            RoutingExample(
                id=f"q{seed}-{i}",
                prompt=_quiz(country, rng),
                task="trivia",
                scores={"mathbot": 0.0, "quizbot": 1.0, "bigbot": 1.0 if noise > 0.3 else 0.0},
            )
        )
        rows.append(
            RoutingExample(
                id=f"c{seed}-{i}",
                prompt=_code(CODE[(i + seed) % len(CODE)], rng),
                task="code",
                scores={"mathbot": 0.0, "quizbot": 0.0, "bigbot": 1.0},
            )
        )
    return rows


@pytest.fixture(scope="module")
def embedder() -> Any:
    import torch

    from expertgraph.policies.embeddings.embedder import SentenceTransformerEmbedder

    torch.set_num_threads(1)
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def train_set() -> Any:
    return from_examples(
        build_rows(seed=1, per_task=24), name="built", prices=PRICES, cost_unit="units"
    )


@pytest.fixture(scope="module")
def probes() -> dict[str, list[str]]:
    rng = random.Random(99)
    return {
        "math": [_math(rng) for _ in range(4)],
        "trivia": [_quiz(c, rng) for c in ("Germany", "India", "Brazil", "China")],
        "code": [
            _code(w, rng)
            for w in ("compute the median of a list", "strip whitespace from a string")
        ],
    }


@pytest.fixture(scope="module")
def routers(
    train_set: Any, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each kind trained once and saved; tests load them from disk."""
    out: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("routers")
    for kind in MODEL_KINDS:
        router = train_router(train_set, kind, embedder=embedder, folds=3, seed=0)
        out[kind] = router.save(base / kind)
    return out


def state(
    prompt: str,
    *,
    experts: list[str] | None = None,
    plan_step: PlanStep | None = None,
    health: dict[str, ExpertHealth] | None = None,
    top_k: int = 1,
) -> RoutingState:
    names = experts or EXPERTS
    views = [
        ExpertView(name=n, card=ExpertCard(), health=(health or {}).get(n, ExpertHealth()))
        for n in names
    ]
    return RoutingState(
        task=Task(prompt=prompt), step_index=0, experts=views, plan_step=plan_step, top_k=top_k
    )


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_kind_learns_who_is_good_at_what(
    kind: str, routers: dict[str, Path], embedder: Any, probes: dict[str, list[str]]
) -> None:
    router = LearnedRouter.load(routers[kind], experts=EXPERTS, embedder=embedder, lam=0.3)
    q = router.predict_quality(probes["math"] + probes["trivia"] + probes["code"])
    assert q.shape == (10, 3) and np.all(np.isfinite(q))
    col = {n: j for j, n in enumerate(router.experts)}
    # quality of the specialist beats the other specialist on its own task
    assert (q[:4, col["mathbot"]] > q[:4, col["quizbot"]]).all()
    assert (q[4:8, col["quizbot"]] > q[4:8, col["mathbot"]]).all()
    assert (q[8:, col["bigbot"]] > q[8:, col["mathbot"]]).all()
    # and decide() routes to the cheap specialist, or to the generalist for code
    for prompt in probes["math"][:2]:
        assert router.decide(state(prompt)).experts == ["mathbot"]
    for prompt in probes["trivia"][:2]:
        assert router.decide(state(prompt)).experts == ["quizbot"]
    decision = router.decide(state(probes["code"][0]))
    assert decision.experts == ["bigbot"]
    assert set(decision.scores) == set(EXPERTS) and decision.policy == kind
    assert "bigbot" in decision.rationale and decision.meta["lam"] == pytest.approx(0.3)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_save_load_round_trip_is_exact_and_pickle_free(
    kind: str, train_set: Any, embedder: Any, probes: dict[str, list[str]], tmp_path: Path
) -> None:
    router = train_router(train_set, kind, embedder=embedder, folds=0)
    prompts = probes["math"] + probes["code"]
    before = router.predict_quality(prompts)
    folder = router.save(tmp_path / kind)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == kind and meta["experts"] == train_set.experts
    assert meta["embedder"] == embedder.name
    assert meta["training"]["sha256"] == train_set.sha256() and meta["training"]["n"] == len(
        train_set
    )
    with np.load(folder / "weights.npz", allow_pickle=False) as data:  # readable without pickle
        assert all(data[k].dtype != object for k in data.files)
    after = LearnedRouter.load(folder, experts=EXPERTS, embedder=embedder).predict_quality(prompts)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


def test_lambda_trades_quality_for_cost(
    routers: dict[str, Path], embedder: Any, probes: dict[str, list[str]]
) -> None:
    code = probes["code"][0]
    free = LearnedRouter.load(routers["knn"], experts=EXPERTS, embedder=embedder, lam=0.0)
    assert free.decide(state(code)).experts == ["bigbot"]
    stingy = LearnedRouter.load(routers["knn"], experts=EXPERTS, embedder=embedder, lam=5.0)
    assert stingy.decide(state(code)).experts[0] in {"mathbot", "quizbot"}


def test_target_cost_uses_the_held_back_calibration_curve(
    routers: dict[str, Path], embedder: Any
) -> None:
    meta = json.loads((routers["task"] / "meta.json").read_text())
    curve = meta["calibration"]["curve"]
    assert curve and meta["calibration"]["folds"] == 3
    costs = [p[1] for p in curve]
    assert costs[0] == max(costs) and costs[-1] == min(costs)  # lambda up, cost down
    budget = (max(costs) + min(costs)) / 2
    router = LearnedRouter.load(
        routers["task"], experts=EXPERTS, embedder=embedder, target_cost=budget
    )
    point = min((p for p in curve if p[1] <= budget), key=lambda p: p[0])
    assert router.lam == pytest.approx(point[0])
    with pytest.raises(PolicyError, match="below the cheapest"):
        LearnedRouter.load(
            routers["task"], experts=EXPERTS, embedder=embedder, target_cost=min(costs) / 10
        )


def test_train_with_target_cost_stores_a_lambda_that_meets_it(
    train_set: Any, embedder: Any
) -> None:
    router = train_router(train_set, "knn", embedder=embedder, target_cost=0.3, folds=3)
    assert router.lam > 0
    cal = router.meta["calibration"]
    assert cal["met"] and cal["mean_cost"] <= 0.3 + 1e-9


def test_decide_respects_step_restriction_failures_and_top_k(
    routers: dict[str, Path], embedder: Any, probes: dict[str, list[str]]
) -> None:
    router = LearnedRouter.load(routers["mlp"], experts=EXPERTS, embedder=embedder, lam=0.3)
    math = probes["math"][0]
    only = router.decide(
        state("ignored", plan_step=PlanStep(instruction=math, experts=["quizbot", "bigbot"]))
    )
    assert (
        only.instruction == math
        and only.experts[0] in {"quizbot", "bigbot"}
        and "mathbot" not in only.experts
    )
    broken = {"mathbot": ExpertHealth(calls=2, errors=2, last_error="boom")}
    routed = router.decide(state(math, health=broken))
    assert (
        routed.experts != ["mathbot"]
        and "routed around failing experts: mathbot" in routed.rationale
    )
    assert "mathbot" not in routed.scores
    # With avoid_failing off, the failing expert stays in the pool (the step's allowed experts).
    router.avoid_failing = False
    kept = router.decide(state(math, health=broken))
    assert kept.experts == ["mathbot"] and set(kept.scores) == set(EXPERTS)
    assert "routed around" not in kept.rationale
    router.avoid_failing = True
    two = router.decide(state(math, top_k=2))
    assert len(two.experts) == 2 and two.experts[0] == "mathbot" and two.mode == "topk"
    # an open task is answered in one step, then the policy finishes
    from expertgraph.core.types import Decision, Step

    done = state(math)
    done.steps = [Step(index=0, instruction=math, decision=Decision(experts=["mathbot"]))]
    assert router.decide(done).action == "finish"


def test_registry_builds_every_kind_and_checks_the_configured_experts(
    routers: dict[str, Path], tmp_path: Path
) -> None:
    home = routers["knn"].parent
    ctx = BuildContext(experts={n: object() for n in EXPERTS}, home=home)
    for kind in MODEL_KINDS:
        policy = build_policy(kind, {"path": kind, "lam": 0.2}, ctx)  # relative to home
        assert isinstance(policy, LearnedRouter) and policy.lam == pytest.approx(0.2)
    with pytest.raises(ConfigError, match=r"is a 'knn' router, not 'mlp'"):
        build_policy("mlp", {"path": str(routers["knn"])}, ctx)
    with pytest.raises(ConfigError, match="lam or target_cost"):
        build_policy("knn", {"path": str(routers["knn"]), "lam": 0.1, "target_cost": 0.5}, ctx)
    with pytest.raises(ConfigError, match="unknown option"):
        build_policy("knn", {"path": str(routers["knn"]), "k": 3}, ctx)
    with pytest.raises(ConfigError, match="not a trained router"):
        build_policy("knn", {"path": str(tmp_path / "nothing")}, ctx)


def test_a_training_set_naming_an_unconfigured_expert_is_refused(
    embedder: Any, tmp_path: Path
) -> None:
    rows = build_rows(seed=3, per_task=6)
    rows = [r.model_copy(update={"scores": {**r.scores, "ghostbot": 0.5}}) for r in rows]
    router = train_router(
        from_examples(rows, prices={**PRICES, "ghostbot": 0.2}), "knn", embedder=embedder, folds=0
    )
    folder = router.save(tmp_path / "ghost")
    ctx = BuildContext(experts={n: object() for n in EXPERTS}, home=tmp_path)
    with pytest.raises(ConfigError) as err:
        build_policy("knn", {"path": str(folder)}, ctx)
    assert "ghostbot" in str(err.value) and "not configured" in str(err.value)
    with pytest.raises(PolicyError, match="configured experts it was not trained for: extrabot"):
        LearnedRouter.load(folder, experts=[*EXPERTS, "ghostbot", "extrabot"], embedder=embedder)


def test_an_artifact_for_another_embedder_is_refused(routers: dict[str, Path]) -> None:
    class Other:
        name = "some-other-embedder"

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.zeros((len(texts), 384), dtype=np.float32)

    with pytest.raises(PolicyError, match="trained with embedder 'all-minilm-l6-v2'"):
        LearnedRouter.load(routers["knn"], experts=EXPERTS, embedder=Other())


def test_cluster_ranking_weighs_performance_against_cost(train_set: Any, embedder: Any) -> None:
    router = train_router(
        train_set, "cluster", embedder=embedder, params={"n_clusters": 3}, folds=0
    )
    model = router.model
    costs = [PRICES[n] for n in router.experts]
    quality_first = model.ranking(costs, alpha=1.0)
    cost_first = model.ranking(costs, alpha=0.0)
    big = router.experts.index("bigbot")
    assert (cost_first[:, -1] == big).all()  # pure cost: the expensive one is always last
    code = int(model.assign(router.features(["Write a Python function to reverse a list."]))[0])
    assert quality_first[code, 0] == big  # pure quality: the generalist leads the code cluster


def test_ensemble_is_the_mean_of_its_members(
    train_set: Any, embedder: Any, probes: dict[str, list[str]]
) -> None:
    members = [{"kind": "knn", "params": {"k": 5}}, {"kind": "logreg"}]
    ens = train_router(
        train_set, "ensemble", embedder=embedder, params={"members": members}, folds=0
    )
    knn = train_router(train_set, "knn", embedder=embedder, params={"k": 5}, folds=0)
    lr = train_router(train_set, "logreg", embedder=embedder, folds=0)
    prompts = probes["trivia"]
    np.testing.assert_allclose(
        ens.predict_quality(prompts),
        (knn.predict_quality(prompts) + lr.predict_quality(prompts)) / 2,
        rtol=1e-6,
    )
    with pytest.raises(PolicyError, match="bad member"):
        train_router(
            train_set, "ensemble", embedder=embedder, params={"members": [{"kind": "ensemble"}]}
        )


def test_bad_hyper_parameters_and_missing_task_labels(train_set: Any, embedder: Any) -> None:
    with pytest.raises(PolicyError, match="knn: bad hyper-parameters"):
        train_router(train_set, "knn", embedder=embedder, params={"neighbours": 3})
    unlabelled = from_examples([r.model_copy(update={"task": None}) for r in train_set.examples])
    with pytest.raises(PolicyError, match="no task labels"):
        train_router(unlabelled, "task", embedder=embedder)


def test_cli_train_then_eval(tmp_path: Path, train_set: Any) -> None:
    from expertgraph.orchestrator.cli import main

    data = tmp_path / "rows.jsonl"
    train_set.save_jsonl(data)
    held = tmp_path / "held.jsonl"
    save_jsonl(
        [r.model_copy(update={"costs": {n: PRICES[n] for n in EXPERTS}}) for r in build_rows(7, 5)],
        held,
    )
    home = tmp_path / "home"
    out = tmp_path / "knn"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--policy",
                "knn",
                "--out",
                str(out),
                "--home",
                str(home),
                "--param",
                "k=7",
                "--target-cost",
                "0.5",
                "--folds",
                "3",
            ]
        )
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["k"] == 7 and meta["calibration"]["target_cost"] == 0.5
    assert list((home / "cache" / "embeddings").iterdir())  # embeddings were cached under home
    assert main(["eval", "--data", str(held), "--policy", str(out), "--home", str(home)]) == 0


class Counting:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.texts = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.encode(texts)


def test_embedding_cache_reuses_vectors_across_instances(embedder: Any, tmp_path: Path) -> None:
    from expertgraph.policies.embeddings.cache import CachedEmbedder

    texts = ["What is 2 plus 2?", "Name the capital of Peru.", "What is 2 plus 2?"]
    first = Counting(embedder)
    a = CachedEmbedder(first, tmp_path).encode(texts)
    assert first.texts == 2  # the repeated text is embedded once
    second = Counting(embedder)
    b = CachedEmbedder(second, tmp_path).encode(texts[::-1])
    assert second.texts == 0
    np.testing.assert_array_equal(b, a[::-1])
    np.testing.assert_allclose(a, embedder.encode(texts), atol=1e-6)
    for shard in (tmp_path / "all-minilm-l6-v2").glob("*.npz"):
        with np.load(shard, allow_pickle=False) as data:
            assert data["vectors"].dtype == np.float32 and data["keys"].dtype.kind == "U"


def test_embedding_cache_merges_per_prompt_shards(tmp_path: Path) -> None:
    from expertgraph.policies.embeddings import cache as embed_cache

    class Fixed:
        name = "tiny/embedder v1"  # a name with a path separator and a space

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = embed_cache.CachedEmbedder(Fixed(), tmp_path)
    for i in range(3 * embed_cache._MERGE_AT):
        cache.encode([f"prompt {i}" + "x" * i])
    folder = cache.store.folder
    assert (
        folder.parent == tmp_path
        and "/" not in folder.name
        and folder.name.startswith("tiny_embedder_v1-")
    )
    assert len(list(folder.glob("shard-*.npz"))) < embed_cache._MERGE_AT
    fresh = embed_cache.CachedEmbedder(Fixed(), tmp_path)
    got = fresh.encode([f"prompt {i}" + "x" * i for i in range(3 * embed_cache._MERGE_AT)])
    n = 3 * embed_cache._MERGE_AT
    assert fresh.misses == 0 and got[:, 0].tolist() == [
        len(f"prompt {i}" + "x" * i) for i in range(n)
    ]


def test_share_calibration_at_training_and_in_decide(
    train_set: Any, embedder: Any, probes: dict[str, list[str]], tmp_path: Path
) -> None:
    wanted = {"mathbot": 0.2, "quizbot": 0.2, "bigbot": 0.6}
    router = train_router(train_set, "logreg", embedder=embedder, target_shares=wanted, folds=3)
    cal = router.meta["calibration"]
    assert cal["target_shares"] == wanted
    assert all(abs(cal["shares"][n] - wanted[n]) <= 0.05 for n in wanted)
    held = [r.prompt for r in build_rows(seed=5, per_task=10)]
    picks = [router.decide(state(p)).experts[0] for p in held]
    assert abs(picks.count("bigbot") / len(picks) - 0.6) <= 0.15  # the shares carry to new prompts
    back = LearnedRouter.load(router.save(tmp_path / "shares"), experts=EXPERTS, embedder=embedder)
    assert back.offsets == pytest.approx(router.offsets)
    decision = back.decide(state(probes["math"][0]))
    assert "share offset" in decision.rationale
    plain = LearnedRouter.load(tmp_path / "shares", experts=EXPERTS, embedder=embedder, lam=0.0)
    assert not any(plain.offsets.values())
    with pytest.raises(PolicyError, match="names experts the data does not have: ghost"):
        train_router(train_set, "logreg", embedder=embedder, target_shares={"ghost": 1.0})


def test_a_trained_router_drives_a_configured_run(
    routers: dict[str, Path], tmp_path: Path, probes: dict[str, list[str]]
) -> None:
    from expertgraph.orchestrator import Orchestrator

    experts = "".join(
        f"  - name: {n}\n    kind: callable\n    callable: expertgraph.agents.tools:calculator\n"
        for n in EXPERTS
    )
    home = routers["knn"].parent
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"experts:\n{experts}policy:\n  name: knn\n  path: knn\n  lam: 0.3\n"
        f"home: {home}\ntrace:\n  dir: {tmp_path / 'traces'}\n"
    )
    orch = Orchestrator.from_config(config, base_dir=tmp_path)
    result = orch.run(probes["math"][0])
    decision = result.steps[0].decision
    assert decision.policy == "knn" and decision.experts == ["mathbot"]
    assert set(decision.meta["quality"]) == set(EXPERTS)
    # the same configuration without one of the router's experts is refused when it is built
    config.write_text(config.read_text().replace("  - name: bigbot", "  - name: otherbot"))
    with pytest.raises(ConfigError, match="bigbot"):
        Orchestrator.from_config(config, base_dir=tmp_path)
