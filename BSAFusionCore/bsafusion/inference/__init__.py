"""The shipped inference path: register and fuse 2D pairs (:mod:`.fuser`) and volumes (:mod:`.volume`).

Stages, in the order a pair meets them: intensity checks and scaling (:mod:`.intensity`,
volumes), rigid pre-alignment (:mod:`.prealign`, volumes), the network's registration, optional
per-pair refinement of its field (:mod:`.refine`), fusion. Nothing here imports training,
evaluation or the demo phantom: what a user runs must not depend on them.
"""

from bsafusion.inference.fuser import Fuser, FusionResult

__all__ = ["Fuser", "FusionResult"]
