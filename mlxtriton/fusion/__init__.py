"""Fusion layer: graph -> graph passes that group equations into `Fused` regions, one generated
kernel each (`fuse`), and decide how each region reads its inputs (`layout`).
May import mlxtriton.graph and mlxtriton.hw only.
"""

from mlxtriton.fusion.cluster import fuse, fuse_with_report, max_arrays
from mlxtriton.fusion.index_space import IndexSpace, Load, RegionError, analyze, index_space
from mlxtriton.fusion.layout import layout, layout_with_report
from mlxtriton.fusion.report import Boundary, FusionReport, LayoutDecision, RegionReport, Unfused

__all__ = [
    "fuse", "fuse_with_report", "max_arrays", "layout", "layout_with_report", "index_space", "analyze", "IndexSpace", "Load",
    "RegionError", "FusionReport", "RegionReport", "Unfused", "Boundary", "LayoutDecision",
]
