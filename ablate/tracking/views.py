"""The MLflow UI's pages a study opens on.

MLflow's UI loads a view shared under the experiment tag mlflow.sharedViewState.KEY when its
link says viewStateShareKey=KEY: its search, its order and its columns, in the order given.
Every study's experiment carries one: the final trials flat (no search trials, no parent runs
to expand), sorted by variant, with what a comparison reads first.
"""

from typing import Any

from ablate.core.schema import Metric, Param, Phase, Tag, quoted

VIEW_KEY = "ablate-trials"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
VIEW_COLUMNS = {  # column → its width in pixels: narrow enough that the metrics are on the first screen
    f"params.{quoted(Param.VARIANT)}": 100,
    f"params.{quoted(Param.SEED)}": 60,
    f"metrics.{quoted(Metric.VAL_LOSS)}": 90,
    f"metrics.{quoted(Metric.VAL_ACCURACY)}": 100,
    f"params.{quoted(Param.N_PARAMS_NON_EMBEDDING)}": 120,
    f"params.{quoted(Param.FLOPS_PER_TOKEN)}": 110,
    f"metrics.{quoted(Metric.MEAN_TOKENS_PER_S)}": 120,
    "attributes.`Dataset`": 170,
}


def runs_view() -> dict[str, Any]:
    """The shared view of a study's runs table, as the MLflow UI stores one (search facets and UI state)."""
    return {
        "searchFilter": f"tags.{quoted(Tag.PHASE)} = '{Phase.FINAL}'",
        "orderByKey": f"params.{quoted(Param.VARIANT)}",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(VIEW_COLUMNS),
        "columnOrder": list(VIEW_COLUMNS),
        "columnWidths": VIEW_COLUMNS,
        "runsExpanded": {},
    }


def runs_page(exp_id: str, view: bool = True) -> str:
    """The MLflow UI's path (after its address) of an experiment's runs table, in model-training
    mode, on the study's view (`runs_view`) unless the experiment predates it."""
    shared = f"viewStateShareKey={VIEW_KEY}&" if view else ""
    return f"/#/experiments/{exp_id}/runs?{shared}workflowType=machine_learning"


def run_page(exp_id: str, run_id: str) -> str:
    """The MLflow UI's path of one run."""
    return f"/#/experiments/{exp_id}/runs/{run_id}"
