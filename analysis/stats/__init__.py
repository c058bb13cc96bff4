"""Pure inference for flagscope: sufficient statistics in, estimates out (stdlib only)."""

from flagscope.analysis.stats.estimate import Estimate, Method, Status
from flagscope.analysis.stats.multiple import benjamini_hochberg
from flagscope.analysis.stats.proportions import (
    newcombe_difference,
    newcombe_p_value,
    wilson_interval,
)
from flagscope.analysis.stats.quantiles import (
    QuantileInterval,
    bounded_by_data,
    pooled_rank_halfwidths,
    quantile_difference,
    quantile_interval_from_samples,
    quantile_rank_halfwidth,
    quantile_rank_interval,
    quantile_type7,
)
from flagscope.analysis.stats.rare import RARE_EVENT_THRESHOLD, is_rare, rare_difference
from flagscope.analysis.stats.ratio import (
    RatioStats,
    choose_error_method,
    design_effect,
    error_rate_difference,
    ratio_difference,
)
from flagscope.analysis.stats.sequential import (
    DEFAULT_TUNING,
    sequential_estimate,
    sequential_halfwidth,
    sequential_p_value,
    sequential_stretch,
)
from flagscope.analysis.stats.srm import (
    SRM_ALERT_P_VALUE,
    SrmResult,
    sequential_srm_test,
    srm_test,
)

__all__ = [
    "DEFAULT_TUNING",
    "RARE_EVENT_THRESHOLD",
    "SRM_ALERT_P_VALUE",
    "Estimate",
    "Method",
    "QuantileInterval",
    "RatioStats",
    "SrmResult",
    "Status",
    "benjamini_hochberg",
    "bounded_by_data",
    "choose_error_method",
    "design_effect",
    "error_rate_difference",
    "is_rare",
    "newcombe_difference",
    "newcombe_p_value",
    "pooled_rank_halfwidths",
    "quantile_difference",
    "quantile_interval_from_samples",
    "quantile_rank_halfwidth",
    "quantile_rank_interval",
    "quantile_type7",
    "rare_difference",
    "ratio_difference",
    "sequential_estimate",
    "sequential_halfwidth",
    "sequential_p_value",
    "sequential_srm_test",
    "sequential_stretch",
    "srm_test",
    "wilson_interval",
]
